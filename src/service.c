/*
 * service.c: sd_notify for systemd (see service.h). libsystemd is optional
 * (configure's --without-systemd); without it the calls do nothing.
 */
#include "service.h"

#include <string.h>

#include "log.h"

#include "build_config.h"

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

void service_notify(const char *state)
{
#ifdef HAVE_LIBSYSTEMD
	int rc = sd_notify(0, state);

	if (rc < 0)
		log_debug("sd_notify: %s", strerror(-rc));
#else
	(void)state;
#endif
}
