/*
 * fuzz_session.c: libFuzzer harness for a whole client session up to the
 * admin console, through pgmux's own code: client.c reads the bytes from a
 * socket on a real worker loop (worker.c), answers SSLRequest and
 * GSSENCRequest, looks up CancelRequests, parses the StartupMessage and its
 * "options", runs SCRAM-SHA-256, MD5 or trust authentication against
 * secrets loaded from JSON files, and, for an admin user on the database
 * "pgmux", runs the admin console (admin.c: simple and extended protocol,
 * SHOW, PAUSE, KILL, CUTOVER TO ...).
 *
 * The first input byte picks client_auth (scram-sha-256, md5 or trust); the
 * rest is written to the client's socket, which is then shut for writing.
 * The harness plays the main thread for the requests the admin console
 * hands it (RELOAD, SHUTDOWN, CUTOVER TO): it parses a CUTOVER host list as
 * control.c does and replies, but does not reload, drain or cut over. There
 * is no backend: a login outside the admin console waits for an instance
 * that never becomes healthy and ends when its client does.
 *
 * Checks: everything pgmux writes back is a sequence of well-framed backend
 * messages (after the one-byte answers to encryption requests), with
 * well-formed ErrorResponses and ReadyForQuery states, and nothing after a
 * FATAL error; with SCRAM or MD5 no AuthenticationOk is ever sent, since the
 * harness never gives the password; and the session ends once its client
 * has gone.
 *
 * worker.c and control.c are included so that the harness can run one
 * worker on its own thread and see the admin console's request queue.
 */
#include "../../src/worker.c"
#include "../../src/control.c"

#include <ctype.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "admin.h"
#include "dispatch.h"
#include "fuzz.h"
#include "log.h"
#include "secrets.h"

#define N_AUTH 3
static struct config *configs[N_AUTH];
static struct worker *worker;
static char dir[64] = "/tmp/pgmux-fuzz-session.XXXXXX";

static void write_file(const char *name, const char *text)
{
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	FUZZ_CHECK(fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text) && close(fd) == 0, "%s", path);
}

static struct config *load_config(const char *auth)
{
	char text[1024], name[64], path[256], err[512];
	struct config *cfg;

	snprintf(text, sizeof(text),
		 "[pgmux]\nclient_auth = %s\nsecrets_dir = %s/secrets\nadmin_users = admin\n"
		 "client_login_timeout = 60s\n[target]\nhosts = 127.0.0.1:1\n[pool]\npool_mode = transaction\n",
		 auth, dir);
	snprintf(name, sizeof(name), "%s.ini", auth);
	write_file(name, text);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	cfg = config_load(path, err, sizeof(err));
	FUZZ_CHECK(cfg != NULL, "%s", err);
	return cfg;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const char *const auth[N_AUTH] = { "scram-sha-256", "md5", "trust" };
	char path[256], err[512];

	(void)argc;
	(void)argv;
	log_set_level(-1);
	signal(SIGPIPE, SIG_IGN);
	FUZZ_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
	snprintf(path, sizeof(path), "%s/secrets", dir);
	FUZZ_CHECK(mkdir(path, 0700) == 0, "%s", path);
	write_file("secrets/app.json", "{\"username\": \"app\", \"password\": \"pencil\"}");
	write_file("secrets/admin.json", "{\"username\": \"admin\", \"password\": \"pencil\"}");
	for (int i = 0; i < N_AUTH; i++)
		configs[i] = load_config(auth[i]);
	pgmux_config_ptr = configs[0];
	FUZZ_CHECK(secrets_reload(path, err, sizeof(err)) == 2, "secrets: %s", err);
	FUZZ_CHECK(pool_init(configs[0]) == 0, "pool_init");

	/* The admin console's requests queue up here; the harness answers them. */
	C.base = event_base_new();
	pthread_mutex_init(&C.lock, NULL);
	list_init(&C.requests);
	C.request_event = event_new(C.base, -1, 0, on_requests, NULL);
	FUZZ_CHECK(C.base && C.request_event, "control");

	client_set_console(&admin_console);
	pool_set_wait_ended(client_wait_ended); /* as main.c does */
	worker = worker_create(0, &dispatch_worker_ops);
	FUZZ_CHECK(worker != NULL, "worker_create");
	current_worker = worker;
	workers = &worker;
	n_workers = 1;
	return 0;
}

/* What the main thread would answer; only CUTOVER's host list is parsed, as on_requests() does. */
static void answer_requests(void)
{
	struct list_node *node;

	pthread_mutex_lock(&C.lock);
	while ((node = list_pop_front(&C.requests)) != NULL) {
		struct control_request *r = list_entry(node, struct control_request, node);
		struct target_host *hosts;
		int n;
		char err[512];

		pthread_mutex_unlock(&C.lock);
		switch (r->op) {
		case CONTROL_RELOAD:
			worker_post_admin_reply(r->reply_to, r->client_id, true, "RELOAD");
			break;
		case CONTROL_SHUTDOWN:
			worker_post_admin_reply(r->reply_to, r->client_id, true, "SHUTDOWN");
			break;
		case CONTROL_SECRET_HOSTS:
			FUZZ_CHECK(false, "CONTROL_SECRET_HOSTS comes from the secrets refresh, never from a client");
			break;
		case CONTROL_CUTOVER:
			if (config_parse_hosts(r->arg, &hosts, &n, err, sizeof(err)) != 0) {
				worker_post_admin_reply(r->reply_to, r->client_id, false, err);
			} else {
				config_free_hosts(hosts, n);
				worker_post_admin_reply(r->reply_to, r->client_id, true, "CUTOVER");
			}
			break;
		}
		free(r->arg);
		free(r);
		pthread_mutex_lock(&C.lock);
	}
	pthread_mutex_unlock(&C.lock);
}

/* Read what pgmux wrote so far into out (growing it). */
static void drain(int fd, struct iobuf *out)
{
	uint8_t buf[16384];
	ssize_t n;

	while ((n = read(fd, buf, sizeof(buf))) > 0)
		iobuf_append(out, buf, (size_t)n);
}

/* Everything after the encryption answers must be whole backend messages. */
static void check_output(const uint8_t *p, size_t len, size_t answers, bool password_required)
{
	size_t pos = 0;
	bool fatal_seen = false;

	for (size_t i = 0; i < answers && pos < len && (p[pos] == 'N' || p[pos] == 'S'); i++)
		pos++;
	/*
	 * A client of protocol 1 or 2 is refused in that protocol's format, as
	 * PostgreSQL refuses it: 'E', the text, a NUL, and nothing after.
	 */
	{
		static const char old[] = "EFATAL:  unsupported frontend protocol ";

		if (len - pos > sizeof(old) - 1 && memcmp(p + pos, old, sizeof(old) - 1) == 0) {
			FUZZ_CHECK(memchr(p + pos, '\0', len - pos) == p + len - 1,
				   "an old-protocol error that is not one NUL-terminated text at the end, byte %zu", pos);
			return;
		}
	}
	while (pos < len) {
		uint32_t mlen;

		FUZZ_CHECK(len - pos >= PROTO_HEADER_LEN, "a partial header at the end (%zu of %zu bytes)", pos, len);
		mlen = get_u32(p + pos + 1);
		FUZZ_CHECK(proto_valid_backend_type(p[pos]), "message type %d at byte %zu", p[pos], pos);
		FUZZ_CHECK(mlen >= 4 && mlen <= len - pos - 1, "length %u at byte %zu of %zu", mlen, pos, len);
		FUZZ_CHECK(!fatal_seen, "a message after a FATAL error, at byte %zu", pos);
		if (p[pos] == BE_ERROR_RESPONSE) {
			struct error_fields fields;

			FUZZ_CHECK(proto_parse_error(p + pos + PROTO_HEADER_LEN, mlen - 4, &fields) == 0 &&
					   fields.severity && fields.sqlstate && strlen(fields.sqlstate) == 5 && fields.message,
				   "a malformed ErrorResponse at byte %zu", pos);
			fatal_seen = strcmp(fields.severity, "FATAL") == 0;
		}
		if (p[pos] == BE_READY_FOR_QUERY)
			FUZZ_CHECK(mlen == 5 && (p[pos + 5] == 'I' || p[pos + 5] == 'T' || p[pos + 5] == 'E'),
				   "ReadyForQuery with status %d", p[pos + 5]);
		if (p[pos] == BE_AUTHENTICATION) {
			FUZZ_CHECK(mlen >= 8, "short Authentication message");
			FUZZ_CHECK(!password_required || get_u32(p + pos + 5) != AUTH_REQ_OK,
				   "AuthenticationOk without the password");
		}
		pos += 1 + (size_t)mlen;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sockaddr_in addr;
	struct iobuf out;
	int fds[2], sndbuf = 1 << 20;
	size_t answers = 0;
	int passes, quiet;

	if (size < 1)
		return 0;
	pgmux_config_ptr = configs[data[0] % N_AUTH];
	data++;
	size--;
	/*
	 * Encryption requests at the start are answered with one byte each, as
	 * PostgreSQL answers them: whatever else their packet holds, once per
	 * kind (a second one is an unknown protocol version).
	 */
	{
		bool ssl = false, gss = false;

		for (size_t pos = 0; pos + 8 <= size;) {
			uint32_t plen = get_u32(data + pos), code = get_u32(data + pos + 4);

			if (plen < 8 || plen - 4 > PROTO_MAX_STARTUP_PACKET || plen > size - pos)
				break;
			if (code == PROTO_SSL_REQUEST && !ssl)
				ssl = true;
			else if (code == PROTO_GSSENC_REQUEST && !gss)
				gss = true;
			else
				break;
			answers++;
			pos += plen;
		}
	}

	FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0, "socketpair");
	setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	fcntl(fds[1], F_SETFL, O_NONBLOCK);
	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons(40000);
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	client_accept(worker, fds[0], (struct sockaddr *)&addr, sizeof(addr), ENDPOINT_WRITER);
	if (size > 0)
		FUZZ_CHECK(write(fds[1], data, size) == (ssize_t)size, "writing the input");

	/*
	 * Let the session work through the input (and the admin console wait
	 * for answers) until nothing moves any more; only then does the client
	 * go away, so that its EOF does not cut every exchange short.
	 */
	iobuf_init(&out);
	for (passes = 0, quiet = 0; passes < 200 && quiet < 2 && !list_empty(&worker->clients); passes++) {
		unsigned long activity = worker->activity;
		size_t before = iobuf_len(&out);

		event_base_loop(worker->base, EVLOOP_NONBLOCK);
		answer_requests();
		drain(fds[1], &out);
		quiet = activity == worker->activity && before == iobuf_len(&out) ? quiet + 1 : 0;
	}
	shutdown(fds[1], SHUT_WR);
	for (passes = 0; passes < 1000; passes++) {
		event_base_loop(worker->base, EVLOOP_NONBLOCK);
		answer_requests();
		drain(fds[1], &out);
		if (list_empty(&worker->clients) && list_empty(&worker->reap_clients))
			break;
	}
	FUZZ_CHECK(list_empty(&worker->clients), "the session outlived its client (%d loop passes)", passes);
	if (getenv("FUZZ_SESSION_TRACE")) {
		/* For replaying one input by hand: what pgmux answered, as text. */
		fprintf(stderr, "pgmux wrote %zu bytes after %d loop passes:\n", iobuf_len(&out), passes);
		for (size_t i = 0; i < iobuf_len(&out); i++)
			fputc(isprint(iobuf_head(&out)[i]) ? iobuf_head(&out)[i] : '.', stderr);
		fputc('\n', stderr);
	}
	if (iobuf_len(&out) > 0)
		check_output(iobuf_head(&out), iobuf_len(&out), answers, pgmux_config_ptr != configs[2]);
	iobuf_free(&out);
	close(fds[1]);
	return 0;
}
