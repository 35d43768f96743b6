/*
 * service.h: telling a service manager how pgmux is doing (systemd's
 * sd_notify, for the Type=notify unit in contrib/pgmux.service): READY=1
 * once it accepts, RELOADING=1 and READY=1 around a reload, STOPPING=1 when
 * it stops, MAINPID= when a process started with -R takes over. Nothing
 * happens when pgmux was built without libsystemd or runs outside systemd
 * (NOTIFY_SOCKET unset).
 */
#ifndef PGMUX_SERVICE_H
#define PGMUX_SERVICE_H

/* Send state (sd_notify's newline-separated assignments); errors are logged at debug level only. */
void service_notify(const char *state);

#endif
