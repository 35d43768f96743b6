/*
 * config.c: the loader that turns an INI file into an immutable struct
 * config, through the option table (config_options.c), the single source of
 * truth: defaults are parsed from it, the man page and example file are
 * checked against it.
 */
#include "config.h"
#include "util.h"

#include "log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* Enum fields are stored through an int pointer; that is only sound while the
 * compiler gives them the size of an int. */
_Static_assert(sizeof(enum pool_mode) == sizeof(int), "enum pool_mode must be int-sized");
_Static_assert(sizeof(enum client_auth_method) == sizeof(int), "enum client_auth_method must be int-sized");
_Static_assert(sizeof(enum server_tls_mode) == sizeof(int), "enum server_tls_mode must be int-sized");
_Static_assert(sizeof(enum server_auth_method) == sizeof(int), "enum server_auth_method must be int-sized");

#define MAX_TARGET_HOSTS 64
#define DEFAULT_POSTGRES_PORT 5432

/*
 * PostgreSQL refuses any single allocation above 1GB - 1 byte (MaxAllocSize),
 * so no message can be larger. Sizes are capped there, and "1GB" (GIGABYTE)
 * is accepted as a readable way to ask for that cap.
 */
#define SIZE_CAP 1073741823LL

static const char *const known_sections[] = { "pgmux", "target", "pool", "peers" };

/* ------------------------------------------------------------ parse state */

/*
 * Everything the INI callbacks need. inih does not tell its handler which
 * line it is on, so our own line reader counts lines and the handler reads
 * the count; only the first error is kept, as it is the one to fix first.
 */
struct load_state {
	struct config *cfg;
	FILE *file;
	int line_number;
	char *line_buffer; /* getline's buffer */
	size_t line_buffer_size;
	int *option_line;              /* where each option was set, by table index; 0 = not in the file */
	int error_line;                /* 0 = no error yet */
	char error[512];               /* the message without "path:line: " */
};

static void set_error(struct load_state *state, int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_error(struct load_state *state, int line, const char *fmt, ...)
{
	va_list ap;

	if (state->error_line != 0)
		return;
	state->error_line = line;
	va_start(ap, fmt);
	vsnprintf(state->error, sizeof(state->error), fmt, ap);
	va_end(ap);
}

/* ------------------------------------------------------------ value parsers */

/*
 * Each parser either fills *out and returns NULL, or returns a static or
 * state-owned description of what is wrong, worded to follow "[sec] name: ".
 * Messages that quote the value are built into problem[].
 */
struct value_problem {
	char text[384];
};

static const char *problem(struct value_problem *p, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static const char *problem(struct value_problem *p, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(p->text, sizeof(p->text), fmt, ap);
	va_end(ap);
	return p->text;
}

/* Digits only, optionally signed: no spaces, no hex, no trailing text. */
static bool parse_strict_integer(const char *text, long long *out)
{
	const char *digits = text;
	char *end;

	if (*digits == '+' || *digits == '-')
		digits++;
	if (!isdigit((unsigned char)*digits))
		return false;
	errno = 0;
	*out = strtoll(text, &end, 10);
	return errno == 0 && *end == '\0';
}

struct unit {
	const char *name;
	long long factor;
};

static const struct unit duration_units[] = {
	{ "ms", 1 }, { "s", 1000 }, { "min", 60000 }, { "h", 3600000 }, { NULL, 0 },
};

static const struct unit size_units[] = {
	{ "B", 1 }, { "kB", 1024 }, { "MB", 1048576 }, { "GB", GIGABYTE }, { NULL, 0 },
};

/*
 * A non-negative integer followed by an optional unit, with optional spaces
 * between; units are case sensitive as in postgresql.conf (kB, not KB).
 * Returns 0, or -1 for a malformed value, -2 for one too large for long long.
 */
static int parse_with_unit(const char *text, const struct unit *units, long long bare_factor,
			   long long *out)
{
	const char *p = text;
	long long number = 0;
	long long factor = bare_factor;

	if (!isdigit((unsigned char)*p))
		return -1;
	while (isdigit((unsigned char)*p)) {
		if (number > (LLONG_MAX - 9) / 10)
			return -2;
		number = number * 10 + (*p - '0');
		p++;
	}
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p != '\0') {
		const struct unit *u;

		for (u = units; u->name != NULL; u++)
			if (strcmp(p, u->name) == 0)
				break;
		if (u->name == NULL)
			return -1;
		factor = u->factor;
	}
	if (number > LLONG_MAX / factor)
		return -2;
	*out = number * factor;
	return 0;
}

static long long unit_factor(const struct unit *units, const char *name)
{
	for (const struct unit *u = units; u->name != NULL; u++)
		if (strcmp(u->name, name) == 0)
			return u->factor;
	return 0;
}

/* Renders a size or duration for error messages, in the option's own terms. */
static void format_amount(const struct config_option *opt, long long amount, char *buf, size_t len)
{
	if (opt->type == CONFIG_DURATION_MS) {
		if (amount % 1000 == 0)
			snprintf(buf, len, "%llds", amount / 1000);
		else
			snprintf(buf, len, "%lldms", amount);
	} else if (opt->type == CONFIG_SIZE) {
		if (amount == SIZE_CAP || amount == GIGABYTE)
			snprintf(buf, len, "1GB");
		else if (amount % 1048576 == 0)
			snprintf(buf, len, "%lldMB", amount / 1048576);
		else if (amount % 1024 == 0)
			snprintf(buf, len, "%lldkB", amount / 1024);
		else
			snprintf(buf, len, "%lldB", amount);
	} else {
		snprintf(buf, len, "%lld", amount);
	}
}

static const char *check_range(const struct config_option *opt, long long value,
			       struct value_problem *p)
{
	char low[32], high[32];

	/* A maximum of INT_MAX only says what the field can hold; name it only when hit. */
	bool open_ended = opt->max_value == INT_MAX;

	if (value >= opt->min_value && value <= opt->max_value)
		return NULL;
	format_amount(opt, opt->min_value, low, sizeof(low));
	format_amount(opt, opt->max_value, high, sizeof(high));
	if (open_ended && value < opt->min_value)
		return problem(p, "must be at least %s", low);
	if (open_ended)
		return problem(p, "must be at most %s", high);
	return problem(p, "must be between %s and %s", low, high);
}

static const char *parse_int_value(const struct config_option *opt, const char *text, int *out,
				   struct value_problem *p)
{
	long long value;
	const char *why;

	if (!parse_strict_integer(text, &value))
		return problem(p, "invalid integer '%s'", text);
	if ((why = check_range(opt, value, p)) != NULL)
		return why;
	*out = (int)value;
	return NULL;
}

static const char *parse_duration_value(const struct config_option *opt, const char *text,
					int *out, struct value_problem *p)
{
	long long value;
	const char *why;
	int rc = parse_with_unit(text, duration_units, unit_factor(duration_units, opt->bare_unit),
				 &value);

	if (rc == -1)
		return problem(p, "invalid duration '%s' (a whole number with unit ms, s, min or h)",
			       text);
	if (rc == -2)
		return problem(p, "duration '%s' is too large", text);
	if ((why = check_range(opt, value, p)) != NULL)
		return why;
	*out = (int)value;
	return NULL;
}

static const char *parse_size_value(const struct config_option *opt, const char *text, int *out,
				    struct value_problem *p)
{
	long long value;
	const char *why;
	int rc = parse_with_unit(text, size_units, 1, &value);

	if (rc == -1)
		return problem(p, "invalid size '%s' (a whole number with unit B, kB, MB or GB)",
			       text);
	if (rc == -2)
		return problem(p, "size '%s' is too large", text);
	if ((why = check_range(opt, value, p)) != NULL)
		return why;
	*out = (int)(value > SIZE_CAP ? SIZE_CAP : value);
	return NULL;
}

static const char *parse_bool_value(const char *text, bool *out, struct value_problem *p)
{
	static const char *const truths[] = { "true", "on", "yes", "1" };
	static const char *const falsehoods[] = { "false", "off", "no", "0" };

	for (size_t i = 0; i < sizeof(truths) / sizeof(truths[0]); i++) {
		if (strcasecmp(text, truths[i]) == 0) {
			*out = true;
			return NULL;
		}
		if (strcasecmp(text, falsehoods[i]) == 0) {
			*out = false;
			return NULL;
		}
	}
	return problem(p, "invalid boolean '%s' (use true/false, on/off, yes/no or 1/0)", text);
}

/* Appends "a, b or c" to buf: the allowed words, for error messages. */
static void list_words(const char *const *words, char *buf, size_t len)
{
	size_t used = 0;

	buf[0] = '\0';
	for (size_t i = 0; words[i] != NULL && used < len; i++) {
		const char *sep = i == 0 ? "" : words[i + 1] == NULL ? " or " : ", ";
		int n = snprintf(buf + used, len - used, "%s%s", sep, words[i]);

		if (n < 0)
			break;
		used += (size_t)n;
	}
}

static const char *parse_enum_value(const struct config_option *opt, const char *text, int *out,
				    struct value_problem *p)
{
	char allowed[160];

	for (int i = 0; opt->enum_values[i] != NULL; i++) {
		if (strcasecmp(text, opt->enum_values[i]) == 0) {
			*out = i;
			return NULL;
		}
	}
	list_words(opt->enum_values, allowed, sizeof(allowed));
	return problem(p, "invalid value '%s' (expected %s)", text, allowed);
}

static const char *parse_log_level_value(const char *text, int *out, struct value_problem *p)
{
	int level = log_level_from_name(text);

	if (level < 0)
		return problem(p, "invalid log level '%s' (expected error, warning, info or debug)",
			       text);
	*out = level;
	return NULL;
}

static bool is_host_name(const char *name)
{
	size_t len = strlen(name);

	if (len == 0 || len > 253)
		return false;
	for (const char *c = name; *c != '\0'; c++)
		if (!isalnum((unsigned char)*c) && *c != '-' && *c != '.' && *c != '_')
			return false;
	return true;
}

static const char *parse_port(const char *text, const char *entry, int *port,
			      struct value_problem *p)
{
	long long value;

	if (!parse_strict_integer(text, &value) || value < 1 || value > 65535)
		return problem(p, "invalid port '%s' in '%s' (expected 1 to 65535)", text, entry);
	*port = (int)value;
	return NULL;
}

/* One "host[:port]" or "[ipv6][:port]" entry, already trimmed, into *host. */
static const char *parse_host_entry(const char *entry, struct target_host *host,
				    struct value_problem *p)
{
	const char *port_text = NULL;
	const char *name_start = entry;
	size_t name_len;
	char *name;
	const char *why;

	host->port = DEFAULT_POSTGRES_PORT;
	if (entry[0] == '[') {
		const char *close = strchr(entry, ']');
		struct in6_addr address;
		char *numeric;

		if (close == NULL)
			return problem(p, "missing ']' in '%s'", entry);
		name_start = entry + 1;
		name_len = (size_t)(close - name_start);
		if (close[1] == ':')
			port_text = close + 2;
		else if (close[1] != '\0')
			return problem(p, "unexpected text after ']' in '%s'", entry);
		numeric = strndup(name_start, name_len);
		if (numeric == NULL)
			return problem(p, "out of memory");
		if (inet_pton(AF_INET6, numeric, &address) != 1) {
			free(numeric);
			return problem(p, "'%s' is not an IPv6 address in brackets", entry);
		}
		free(numeric);
	} else {
		const char *colon = strchr(entry, ':');

		if (colon != NULL && strchr(colon + 1, ':') != NULL)
			return problem(p, "IPv6 address '%s' must be in brackets, as [address]:port",
				       entry);
		name_len = colon != NULL ? (size_t)(colon - entry) : strlen(entry);
		if (colon != NULL)
			port_text = colon + 1;
	}
	name = strndup(name_start, name_len);
	if (name == NULL)
		return problem(p, "out of memory");
	if (entry[0] != '[' && !is_host_name(name)) {
		free(name);
		return problem(p, "invalid host '%s'", entry);
	}
	if (port_text != NULL && (why = parse_port(port_text, entry, &host->port, p)) != NULL) {
		free(name);
		return why;
	}
	host->host = name;
	return NULL;
}

static void free_hosts(struct target_host *hosts, int count)
{
	for (int i = 0; i < count; i++)
		free(hosts[i].host);
	free(hosts);
}

static const char *parse_hosts_value(const char *text, struct target_host **out, int *out_count,
				     struct value_problem *p)
{
	struct target_host *hosts = calloc(MAX_TARGET_HOSTS, sizeof(*hosts));
	char *copy = strdup(text);
	char *rest = copy, *entry;
	int count = 0;
	const char *why = NULL;

	if (hosts == NULL || copy == NULL) {
		why = problem(p, "out of memory");
		goto fail;
	}
	if (text[0] == '\0') {
		why = problem(p, "at least one host is needed");
		goto fail;
	}
	while ((entry = strsep(&rest, ",")) != NULL) {
		char *end;

		while (*entry == ' ' || *entry == '\t')
			entry++;
		end = entry + strlen(entry);
		while (end > entry && (end[-1] == ' ' || end[-1] == '\t'))
			*--end = '\0';
		if (*entry == '\0') {
			why = problem(p, "empty entry in host list '%s'", text);
			goto fail;
		}
		if (count == MAX_TARGET_HOSTS) {
			why = problem(p, "more than %d hosts", MAX_TARGET_HOSTS);
			goto fail;
		}
		if ((why = parse_host_entry(entry, &hosts[count], p)) != NULL)
			goto fail;
		count++;
	}
	free(copy);
	*out = hosts;
	*out_count = count;
	return NULL;

fail:
	free(copy);
	free_hosts(hosts, count);
	return why;
}

/* ------------------------------------------------------------ storing values */

static void *field_of(struct config *cfg, const struct config_option *opt)
{
	return (char *)cfg + opt->offset;
}

static const void *const_field_of(const struct config *cfg, const struct config_option *opt)
{
	return (const char *)cfg + opt->offset;
}

/* Parses text for opt and, if it is valid, replaces the value in cfg. */
static const char *apply_value(struct config *cfg, const struct config_option *opt,
			       const char *text, struct value_problem *p)
{
	switch (opt->type) {
	case CONFIG_STRING: {
		char **slot = field_of(cfg, opt);
		char *copy;
		const char *why;

		if (opt->min_value > 0 && text[0] == '\0')
			return problem(p, "must not be empty");
		/* Empty means unset, which needs no further check. */
		if (text[0] != '\0' && opt->check_string != NULL &&
		    (why = opt->check_string(text)) != NULL)
			return why;
		if ((copy = strdup(text)) == NULL)
			return problem(p, "out of memory");
		free(*slot);
		*slot = copy;
		return NULL;
	}
	case CONFIG_INT:
		return parse_int_value(opt, text, field_of(cfg, opt), p);
	case CONFIG_BOOL:
		return parse_bool_value(text, field_of(cfg, opt), p);
	case CONFIG_DURATION_MS:
		return parse_duration_value(opt, text, field_of(cfg, opt), p);
	case CONFIG_SIZE:
		return parse_size_value(opt, text, field_of(cfg, opt), p);
	case CONFIG_ENUM:
		return parse_enum_value(opt, text, field_of(cfg, opt), p);
	case CONFIG_LOG_LEVEL:
		return parse_log_level_value(text, field_of(cfg, opt), p);
	case CONFIG_HOSTS: {
		/* The only option of this type; it owns both hosts and n_hosts. */
		struct target_host *hosts = NULL;
		int count = 0;
		const char *why = parse_hosts_value(text, &hosts, &count, p);

		if (why != NULL)
			return why;
		free_hosts(cfg->hosts, cfg->n_hosts);
		cfg->hosts = hosts;
		cfg->n_hosts = count;
		return NULL;
	}
	}
	return problem(p, "option of unknown type");
}

/* ------------------------------------------------------------ the INI callbacks */

static bool is_known_section(const char *name)
{
	for (size_t i = 0; i < sizeof(known_sections) / sizeof(known_sections[0]); i++)
		if (strcmp(name, known_sections[i]) == 0)
			return true;
	return false;
}

static void report_unknown_section(struct load_state *state, const char *name)
{
	set_error(state, state->line_number,
		  "unknown section [%s] (expected [pgmux], [target], [pool] or [peers])", name);
}

/*
 * fgets-style reader for ini_parse_stream. Besides counting lines it strips
 * leading whitespace, because inih would otherwise take an indented line as
 * the continuation of the previous value (a surprise nobody wants here); it
 * rejects lines too long for inih's buffer instead of letting inih split
 * them; and it catches unknown sections that hold no keys, which inih never
 * reports to the handler.
 */
static char *read_line(char *buffer, int size, void *stream)
{
	struct load_state *state = stream;
	ssize_t length = getline(&state->line_buffer, &state->line_buffer_size, state->file);
	char *line;
	size_t stripped_length;

	if (length < 0)
		return NULL;
	state->line_number++;
	line = state->line_buffer;
	if (state->line_number == 1 && strncmp(line, "\xEF\xBB\xBF", 3) == 0)
		line += 3; /* a UTF-8 byte order mark */
	while (*line == ' ' || *line == '\t')
		line++;
	stripped_length = strlen(line);
	if (stripped_length + 1 > (size_t)size) {
		set_error(state, state->line_number, "line is longer than %d characters", size - 2);
		strcpy(buffer, "\n");
		return buffer;
	}
	if (line[0] == '[') {
		const char *close = strchr(line, ']');

		if (close != NULL) {
			char name[64];
			size_t name_length = (size_t)(close - line - 1);

			if (name_length >= sizeof(name))
				name_length = sizeof(name) - 1;
			memcpy(name, line + 1, name_length);
			name[name_length] = '\0';
			if (!is_known_section(name))
				report_unknown_section(state, name);
		}
	}
	memcpy(buffer, line, stripped_length + 1);
	return buffer;
}

static void free_peers(struct peer *peers, int count)
{
	for (int i = 0; i < count; i++)
		free(peers[i].address.host);
	free(peers);
}

/*
 * One line of [peers]: "ID = host[:port]", ID in 1..PEER_ID_MAX, each ID
 * once. Kept ordered by id, so that the rank of an id (config_peer_share())
 * is its index.
 */
static int handle_peer(struct load_state *state, const char *name, const char *value)
{
	struct config *cfg = state->cfg;
	struct target_host address = { NULL, 0 };
	struct value_problem p;
	const char *why;
	long long id;
	int at;

	if (!parse_strict_integer(name, &id) || id < 1 || id > PEER_ID_MAX) {
		set_error(state, state->line_number, "[peers] %s: a peer's id must be a number from 1 to %d", name,
			  PEER_ID_MAX);
		return 0;
	}
	if (config_find_peer(cfg, (int)id) != NULL) {
		set_error(state, state->line_number, "[peers] %s: listed twice", name);
		return 0;
	}
	if (cfg->n_peers == MAX_PEERS) {
		set_error(state, state->line_number, "[peers] %s: more than %d peers", name, MAX_PEERS);
		return 0;
	}
	if ((why = parse_host_entry(value, &address, &p)) != NULL) {
		set_error(state, state->line_number, "[peers] %s: %s", name, why);
		return 0;
	}
	if (cfg->peers == NULL && (cfg->peers = calloc(MAX_PEERS, sizeof(*cfg->peers))) == NULL) {
		free(address.host);
		set_error(state, state->line_number, "out of memory");
		return 0;
	}
	for (at = cfg->n_peers; at > 0 && cfg->peers[at - 1].id > id; at--)
		cfg->peers[at] = cfg->peers[at - 1];
	cfg->peers[at].id = (int)id;
	cfg->peers[at].address = address;
	cfg->n_peers++;
	return 1;
}

static int handle_pair(void *user, const char *section, const char *name, const char *value)
{
	struct load_state *state = user;
	const struct config_option *opt;
	struct value_problem p;
	const char *why;
	size_t index;

	if (state->error_line != 0)
		return 0; /* one error at a time: the first is the one to fix */
	if (section[0] == '\0') {
		set_error(state, state->line_number, "%s: option outside any section", name);
		return 0;
	}
	if (!is_known_section(section)) {
		report_unknown_section(state, section);
		return 0;
	}
	if (strcmp(section, "peers") == 0)
		return handle_peer(state, name, value);
	opt = config_find_option(section, name);
	if (opt == NULL) {
		set_error(state, state->line_number, "[%s] %s: unknown option", section, name);
		return 0;
	}
	index = (size_t)(opt - config_options(NULL));
	if (state->option_line[index] != 0) {
		set_error(state, state->line_number, "[%s] %s: already set on line %d", section,
			  name, state->option_line[index]);
		return 0;
	}
	state->option_line[index] = state->line_number;
	why = apply_value(state->cfg, opt, value, &p);
	if (why != NULL) {
		set_error(state, state->line_number, "[%s] %s: %s", section, name, why);
		return 0;
	}
	return 1;
}

/* ------------------------------------------------------------ load and validate */

/* The line an option was set on, or -1 (an error without a line) if it was not. */
static int line_of(const struct load_state *state, const char *section, const char *name)
{
	const struct config_option *opt = config_find_option(section, name);

	if (opt == NULL || state->option_line[opt - config_options(NULL)] == 0)
		return -1;
	return state->option_line[opt - config_options(NULL)];
}

/* Rules that involve more than one option, checked once the file is read. */
static void check_combinations(struct load_state *state)
{
	const struct config *cfg = state->cfg;
	bool have_cert = cfg->client_tls_cert_file[0] != '\0';
	bool have_key = cfg->client_tls_key_file[0] != '\0';

	if (have_cert && !have_key)
		set_error(state, line_of(state, "pgmux", "client_tls_cert_file"),
			  "[pgmux] client_tls_cert_file: client_tls_key_file must be set too");
	else if (have_key && !have_cert)
		set_error(state, line_of(state, "pgmux", "client_tls_key_file"),
			  "[pgmux] client_tls_key_file: client_tls_cert_file must be set too");
	else if (cfg->require_tls && !have_cert)
		set_error(state, line_of(state, "pgmux", "require_tls"),
			  "[pgmux] require_tls: needs client_tls_cert_file and client_tls_key_file");

	if (cfg->secrets_dir[0] == '\0' && cfg->secrets_manager_secrets[0] == '\0')
		set_error(state, line_of(state, "pgmux", "secrets_dir"), "[pgmux] secrets_dir: must not be empty");
	/* The token is sent as a clear-text password: never where TLS may be skipped. */
	if (cfg->server_auth == SERVER_AUTH_IAM && cfg->server_tls < SERVER_TLS_REQUIRE)
		set_error(state, line_of(state, "target", "server_auth"),
			  "[target] server_auth: iam needs server_tls = require, verify-ca or verify-full "
			  "(the token is sent as a clear-text password)");

	if (cfg->metrics_port != 0 && (cfg->metrics_port == cfg->listen_port || cfg->metrics_port == cfg->readonly_port))
		set_error(state, line_of(state, "pgmux", "metrics_port"),
			  "[pgmux] metrics_port: must differ from listen_port and readonly_port (%d)", cfg->metrics_port);
	if (cfg->readonly_port != 0 && cfg->readonly_port == cfg->listen_port)
		set_error(state, line_of(state, "pgmux", "readonly_port"),
			  "[pgmux] readonly_port: must differ from listen_port (%d)",
			  cfg->listen_port);

	/*
	 * The pools of all users and databases share a host's max_connections,
	 * so one pool's floor above it could never be met. (With max_connections
	 * at 0 the limit is only known once the server has been asked.)
	 */
	/* A cancel key names its instance: every instance must know every id, its own among them. */
	if (cfg->n_peers > 0 && cfg->peer_id == 0)
		set_error(state, -1, "[peers] needs [pgmux] peer_id, this instance's id among them");
	else if (cfg->peer_id != 0 && config_find_peer(cfg, cfg->peer_id) == NULL)
		set_error(state, line_of(state, "pgmux", "peer_id"),
			  "[pgmux] peer_id: %d is not listed in [peers] (list every instance, this one too)",
			  cfg->peer_id);

	if (cfg->max_connections > 0 && cfg->min_pool_size > cfg->max_connections)
		set_error(state, line_of(state, "pool", "min_pool_size"),
			  "[pool] min_pool_size: must not be larger than max_connections (%d)",
			  cfg->max_connections);
}

/* Every option at its default, parsed from the table's own text. */
static struct config *config_defaults(const char *path, char *err, size_t errlen)
{
	struct config *cfg = calloc(1, sizeof(*cfg));
	size_t count;
	const struct config_option *options = config_options(&count);

	if (cfg == NULL || (cfg->path = strdup(path)) == NULL) {
		free(cfg);
		error_printf(err, errlen, "%s: out of memory", path);
		return NULL;
	}
	for (size_t i = 0; i < count; i++) {
		const struct config_option *opt = &options[i];
		struct value_problem p;
		const char *why;

		/* Strings start as "" so that a failed load can free them all. */
		if (opt->type == CONFIG_STRING) {
			char **slot = field_of(cfg, opt);

			if ((*slot = strdup("")) == NULL) {
				config_free(cfg);
				error_printf(err, errlen, "%s: out of memory", path);
				return NULL;
			}
		}
		why = apply_value(cfg, opt, opt->default_value, &p);
		if (why != NULL) {
			/* A broken table is a programming error, but say where. */
			error_printf(err, errlen, "%s: built-in default of [%s] %s: %s", path,
				    opt->section, opt->name, why);
			config_free(cfg);
			return NULL;
		}
	}
	return cfg;
}

struct config *config_load(const char *path, char *err, size_t errlen)
{
	struct load_state state;
	size_t count;
	int rc;

	memset(&state, 0, sizeof(state));
	config_options(&count);
	state.option_line = calloc(count, sizeof(*state.option_line));
	if (state.option_line == NULL) {
		error_printf(err, errlen, "%s: out of memory", path);
		return NULL;
	}
	state.file = fopen(path, "r");
	if (state.file == NULL) {
		error_printf(err, errlen, "%s: %s", path, strerror(errno));
		free(state.option_line);
		return NULL;
	}
	state.cfg = config_defaults(path, err, errlen);
	if (state.cfg == NULL) {
		fclose(state.file);
		free(state.option_line);
		return NULL;
	}

	rc = ini_parse_stream(read_line, &state, handle_pair, &state);
	if (ferror(state.file) && state.error_line == 0)
		set_error(&state, state.line_number + 1, "read error: %s", strerror(errno));
	fclose(state.file);
	free(state.line_buffer);

	if (rc == -2) {
		error_printf(err, errlen, "%s: out of memory", path);
		config_free(state.cfg);
		free(state.option_line);
		return NULL;
	}
	/*
	 * inih reports the first line it could not make sense of, or the first
	 * line our handler refused; a line it reports before ours is malformed.
	 */
	if (rc > 0 && (state.error_line == 0 || rc < state.error_line)) {
		state.error_line = 0;
		set_error(&state, rc, "syntax error: expected '[section]' or 'name = value'");
	}
	if (state.error_line == 0)
		check_combinations(&state);
	free(state.option_line);
	if (state.error_line != 0) {
		if (state.error_line > 0)
			error_printf(err, errlen, "%s:%d: %s", path, state.error_line, state.error);
		else
			error_printf(err, errlen, "%s: %s", path, state.error);
		config_free(state.cfg);
		return NULL;
	}
	return state.cfg;
}

void config_free(struct config *cfg)
{
	size_t count;
	const struct config_option *options = config_options(&count);

	if (cfg == NULL)
		return;
	for (size_t i = 0; i < count; i++)
		if (options[i].type == CONFIG_STRING)
			free(*(char **)field_of(cfg, &options[i]));
	free_hosts(cfg->hosts, cfg->n_hosts);
	free_peers(cfg->peers, cfg->n_peers);
	free(cfg->path);
	free(cfg);
}

int config_parse_hosts(const char *text, struct target_host **hosts, int *n_hosts, char *err, size_t errlen)
{
	struct value_problem p;
	const char *why = parse_hosts_value(text, hosts, n_hosts, &p);

	if (why) {
		error_printf(err, errlen, "%s", why);
		return -1;
	}
	return 0;
}

void config_free_hosts(struct target_host *hosts, int n_hosts)
{
	free_hosts(hosts, n_hosts);
}

struct config *config_with_hosts(const struct config *cfg, const struct target_host *hosts, int n_hosts)
{
	struct config *copy = xmalloc(sizeof(*copy));
	size_t count;
	const struct config_option *options = config_options(&count);

	*copy = *cfg;
	for (size_t i = 0; i < count; i++) {
		if (options[i].type == CONFIG_STRING) {
			char **field = (char **)field_of(copy, &options[i]);

			*field = xstrdup(*field);
		}
	}
	copy->path = xstrdup(cfg->path);
	copy->hosts = xcalloc((size_t)n_hosts, sizeof(*copy->hosts));
	for (int i = 0; i < n_hosts; i++) {
		copy->hosts[i].host = xstrdup(hosts[i].host);
		copy->hosts[i].port = hosts[i].port;
	}
	copy->n_hosts = n_hosts;
	copy->hosts_in_memory = true;
	copy->peers = NULL;
	if (cfg->n_peers > 0) {
		copy->peers = xcalloc(MAX_PEERS, sizeof(*copy->peers));
		for (int i = 0; i < cfg->n_peers; i++) {
			copy->peers[i] = cfg->peers[i];
			copy->peers[i].address.host = xstrdup(cfg->peers[i].address.host);
		}
	}
	return copy;
}

const struct peer *config_find_peer(const struct config *cfg, int id)
{
	for (int i = 0; i < cfg->n_peers; i++)
		if (cfg->peers[i].id == id)
			return &cfg->peers[i];
	return NULL;
}

int config_peer_share(const struct config *cfg, int total)
{
	int rank = 0, n = cfg->n_peers, share;

	if (n == 0 || cfg->peer_id == 0)
		return total;
	while (rank < n && cfg->peers[rank].id != cfg->peer_id)
		rank++;
	share = total / n + (rank < total % n ? 1 : 0);
	return share > 0 ? share : 1;
}

/* ------------------------------------------------------------ queries */

const struct config_option *config_find_option(const char *section, const char *name)
{
	size_t count;
	const struct config_option *options = config_options(&count);

	for (size_t i = 0; i < count; i++)
		if (strcmp(options[i].section, section) == 0 && strcmp(options[i].name, name) == 0)
			return &options[i];
	return NULL;
}

int config_worker_count(const struct config *cfg)
{
	long cpus;

	if (cfg->workers > 0)
		return cfg->workers;
	cpus = sysconf(_SC_NPROCESSORS_ONLN);
	if (cpus < 1)
		return 1;
	return cpus > MAX_WORKERS ? MAX_WORKERS : (int)cpus;
}

static char *render_hosts(const struct config *cfg)
{
	size_t size = 1;
	char *text, *end;

	for (int i = 0; i < cfg->n_hosts; i++)
		size += strlen(cfg->hosts[i].host) + sizeof("[]:65535,");
	if ((text = malloc(size)) == NULL)
		return NULL;
	end = text;
	*end = '\0';
	for (int i = 0; i < cfg->n_hosts; i++) {
		const struct target_host *h = &cfg->hosts[i];
		const char *sep = i == 0 ? "" : ",";

		/* A colon in the host can only be an IPv6 address, which needs brackets again. */
		if (strchr(h->host, ':') != NULL)
			end += sprintf(end, "%s[%s]:%d", sep, h->host, h->port);
		else
			end += sprintf(end, "%s%s:%d", sep, h->host, h->port);
	}
	return text;
}

char *config_value_text(const struct config *cfg, const struct config_option *opt)
{
	char buf[64];

	switch (opt->type) {
	case CONFIG_STRING:
		return strdup(*(char *const *)const_field_of(cfg, opt));
	case CONFIG_INT:
		snprintf(buf, sizeof(buf), "%d", *(const int *)const_field_of(cfg, opt));
		return strdup(buf);
	case CONFIG_BOOL:
		return strdup(*(const bool *)const_field_of(cfg, opt) ? "true" : "false");
	case CONFIG_DURATION_MS:
	case CONFIG_SIZE:
		format_amount(opt, *(const int *)const_field_of(cfg, opt), buf, sizeof(buf));
		return strdup(buf);
	case CONFIG_ENUM: {
		int value = *(const int *)const_field_of(cfg, opt);
		int count = 0;

		while (opt->enum_values[count] != NULL)
			count++;
		return strdup(value >= 0 && value < count ? opt->enum_values[value] : "unknown");
	}
	case CONFIG_LOG_LEVEL:
		return strdup(log_level_name(*(const int *)const_field_of(cfg, opt)));
	case CONFIG_HOSTS:
		return render_hosts(cfg);
	}
	return strdup("unknown");
}

const struct config_option *config_first_fixed_change(const struct config *old,
						      const struct config *next)
{
	size_t count;
	const struct config_option *options = config_options(&count);

	for (size_t i = 0; i < count; i++) {
		const struct config_option *opt = &options[i];
		char *before, *after;
		bool same;

		if (opt->reloadable)
			continue;
		before = config_value_text(old, opt);
		after = config_value_text(next, opt);
		same = before != NULL && after != NULL && strcmp(before, after) == 0;
		free(before);
		free(after);
		if (!same)
			return opt;
	}
	return NULL;
}

static bool list_has_user(const char *list, const char *user);

bool config_is_admin(const struct config *cfg, const char *user)
{
	return list_has_user(cfg->admin_users, user);
}

bool config_is_stats_user(const struct config *cfg, const char *user)
{
	return list_has_user(cfg->stats_users, user);
}

/* True when the comma separated list names user (spaces around names ignored). */
static bool list_has_user(const char *list, const char *user)
{
	const char *p = list;
	size_t user_length;

	if (user == NULL || user[0] == '\0')
		return false;
	user_length = strlen(user);
	while (*p != '\0') {
		const char *start, *end;

		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		start = p;
		while (*p != '\0' && *p != ',')
			p++;
		end = p;
		while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		if ((size_t)(end - start) == user_length && memcmp(start, user, user_length) == 0)
			return true;
	}
	return false;
}

int config_tls_protocol_range(const char *text, int *min_minor, int *max_minor)
{
	bool have[4] = { false, false, false, false };
	const char *p = text;

	while (*p != '\0') {
		const char *start, *end;

		while (*p == ' ' || *p == '\t')
			p++;
		start = p;
		while (*p != '\0' && *p != ',')
			p++;
		end = p;
		while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		if ((size_t)(end - start) == 7 && strncasecmp(start, "TLSv1.2", 7) == 0)
			have[2] = true;
		else if ((size_t)(end - start) == 7 && strncasecmp(start, "TLSv1.3", 7) == 0)
			have[3] = true;
		else
			return -1;
		if (*p == ',')
			p++;
	}
	if (!have[2] && !have[3])
		return -1;
	*min_minor = have[2] ? 2 : 3;
	*max_minor = have[3] ? 3 : 2;
	return 0;
}

bool config_host_is_loopback(const char *host)
{
	struct in_addr v4;
	struct in6_addr v6;

	if (strcasecmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &v4) == 1)
		return (ntohl(v4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &v6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&v6);
	return false;
}

bool config_option_is_secret(const struct config_option *opt)
{
	return strcmp(opt->name, "metrics_token") == 0;
}
