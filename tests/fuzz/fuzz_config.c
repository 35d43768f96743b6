/*
 * fuzz_config.c: libFuzzer harness for the configuration loader (config.c:
 * inih's parser behind pgmux's line reader, the option table's value parsers
 * and the cross-option checks) and for the host-list parser that both
 * [target] hosts and the admin console's CUTOVER TO use.
 *
 * Even first byte: the rest is an INI file, loaded with config_load() from a
 * memfd (the loader reads a path). Odd first byte: the rest is a host list
 * for config_parse_hosts(). A loaded configuration must copy cleanly with
 * config_with_hosts(), as a cutover does; a parsed host list must hold names
 * and ports in range.
 */
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "fuzz.h"
#include "log.h"

static int file = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_set_level(-1);
	file = memfd_create("fuzz_config.ini", 0);
	FUZZ_CHECK(file >= 0, "memfd_create");
	snprintf(path, sizeof(path), "/proc/self/fd/%d", file);
	return 0;
}

static void check_hosts(const struct target_host *hosts, int n)
{
	for (int i = 0; i < n; i++) {
		FUZZ_CHECK(hosts[i].host != NULL && hosts[i].host[0] != '\0', "empty host %d", i);
		FUZZ_CHECK(hosts[i].port > 0 && hosts[i].port <= 65535, "port %d", hosts[i].port);
	}
}

static void load(const uint8_t *data, size_t size)
{
	struct config *cfg, *copy;
	char err[512];

	FUZZ_CHECK(ftruncate(file, 0) == 0 && pwrite(file, data, size, 0) == (ssize_t)size, "writing the memfd");
	err[0] = '\0';
	cfg = config_load(path, err, sizeof(err));
	if (cfg == NULL) {
		FUZZ_CHECK(strncmp(err, path, strlen(path)) == 0, "the error does not name the file: %s", err);
		return;
	}
	check_hosts(cfg->hosts, cfg->n_hosts);
	copy = config_with_hosts(cfg, cfg->hosts, cfg->n_hosts);
	FUZZ_CHECK(copy->n_hosts == cfg->n_hosts && copy->listen_port == cfg->listen_port, "copy differs");
	config_free(copy);
	config_free(cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct target_host *hosts = NULL;
	int n_hosts = 0;
	char err[512];
	char *text;

	if (size < 1)
		return 0;
	if (!(data[0] & 1)) {
		load(data + 1, size - 1);
		return 0;
	}
	text = strndup((const char *)data + 1, size - 1);
	err[0] = '\0';
	if (config_parse_hosts(text, &hosts, &n_hosts, err, sizeof(err)) == 0) {
		FUZZ_CHECK(n_hosts > 0, "an empty host list accepted");
		check_hosts(hosts, n_hosts);
		config_free_hosts(hosts, n_hosts);
	} else {
		FUZZ_CHECK(err[0] != '\0', "a refusal must say why");
	}
	free(text);
	return 0;
}
