/*
 * worker.c: worker threads (see worker.h). The acceptor in the main thread
 * hands sockets over round robin through each worker's inbox; the worker's
 * wake event drains the inbox, then lets its ops see the pool's ready list.
 * Closed clients and servers are freed by a separate reap event, after the
 * callbacks that may still hold pointers to them have returned.
 */
#include "worker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/eventfd.h>

#include <event2/thread.h>

#include "io.h"
#include "log.h"
#include "pgmux.h"
#include "util.h"

struct worker **workers;
int n_workers;

/* Round robin; the main thread (accept) and the monitor (connects) both take from it. */
static unsigned next_worker;
/* The workers that take new clients and backends: the first n_active (workers_balance()). */
static int n_active = 1;
static __thread struct worker *current_worker;

void workers_sum_stats(struct worker_stats *out)
{
	memset(out, 0, sizeof(*out));
	for (int i = 0; i < n_workers; i++) {
		const struct worker_stats *s = &workers[i]->stats;

		out->clients_accepted += __atomic_load_n(&s->clients_accepted, __ATOMIC_RELAXED);
		out->logins_failed += __atomic_load_n(&s->logins_failed, __ATOMIC_RELAXED);
		out->transactions += __atomic_load_n(&s->transactions, __ATOMIC_RELAXED);
		out->queries += __atomic_load_n(&s->queries, __ATOMIC_RELAXED);
		out->borrow_waits += __atomic_load_n(&s->borrow_waits, __ATOMIC_RELAXED);
		out->borrow_timeouts += __atomic_load_n(&s->borrow_timeouts, __ATOMIC_RELAXED);
		out->servers_opened += __atomic_load_n(&s->servers_opened, __ATOMIC_RELAXED);
		out->server_connect_failures += __atomic_load_n(&s->server_connect_failures, __ATOMIC_RELAXED);
		out->sessions_pinned += __atomic_load_n(&s->sessions_pinned, __ATOMIC_RELAXED);
		out->server_handoffs += __atomic_load_n(&s->server_handoffs, __ATOMIC_RELAXED);
		out->clients_moved += __atomic_load_n(&s->clients_moved, __ATOMIC_RELAXED);
		out->send_batches += __atomic_load_n(&s->send_batches, __ATOMIC_RELAXED);
		out->batched_sends += __atomic_load_n(&s->batched_sends, __ATOMIC_RELAXED);
		out->parses_answered += __atomic_load_n(&s->parses_answered, __ATOMIC_RELAXED);
		out->parses_unjudged += __atomic_load_n(&s->parses_unjudged, __ATOMIC_RELAXED);
		out->tls_handshake_failures += __atomic_load_n(&s->tls_handshake_failures, __ATOMIC_RELAXED);
		out->refused_max_client_connections +=
			__atomic_load_n(&s->refused_max_client_connections, __ATOMIC_RELAXED);
		out->refused_max_login_connections +=
			__atomic_load_n(&s->refused_max_login_connections, __ATOMIC_RELAXED);
		out->refused_require_tls += __atomic_load_n(&s->refused_require_tls, __ATOMIC_RELAXED);
		for (int r = 0; r <= SQL_PIN_TOO_LONG; r++)
			out->pins_by_reason[r] += __atomic_load_n(&s->pins_by_reason[r], __ATOMIC_RELAXED);
		histogram_add(&out->client_login, &s->client_login);
		histogram_add(&out->server_connect, &s->server_connect);
	}
}

struct worker *worker_self(void)
{
	return current_worker;
}

/*
 * On w's own thread the wake runs later in this pass; from any other thread
 * it goes through w's eventfd, written once however many wakes come before
 * w reads it. The base has no lock, so no other thread may touch its events:
 * libevent's locked bases took a mutex around every event_add, event_del and
 * event_active (about ten lock and unlock pairs per transaction).
 */
void worker_wake(struct worker *w)
{
	static const uint64_t one = 1;

	if (current_worker == w) {
		event_active(w->wake_event, EV_READ, 0);
		return;
	}
	if (__atomic_exchange_n(&w->wake_pending, true, __ATOMIC_SEQ_CST))
		return;
	while (write(w->wake_fd, &one, sizeof(one)) < 0 && errno == EINTR)
		continue;
}

void worker_schedule_reap(struct worker *w)
{
	event_active(w->reap_event, EV_READ, 0);
}

static void worker_wake_cb(evutil_socket_t fd, short what, void *arg);

/* The eventfd another thread wrote: clear it, then look at the inbox and the ready list. */
static void worker_wake_fd_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	uint64_t count;

	while (read(fd, &count, sizeof(count)) < 0 && errno == EINTR)
		continue;
	/* Cleared before the inbox and the ready list are read: a wake after this writes again. */
	__atomic_store_n(&w->wake_pending, false, __ATOMIC_SEQ_CST);
	worker_wake_cb(-1, EV_READ, w);
}

static void worker_msg_free(struct worker_msg *msg)
{
	free(msg->text);
	free(msg->data);
	free(msg->ids);
	free(msg);
}

static void worker_post(struct worker *w, struct worker_msg *msg)
{
	pthread_mutex_lock(&w->inbox_lock);
	list_append(&w->inbox, &msg->node);
	pthread_mutex_unlock(&w->inbox_lock);
	worker_wake(w);
}

/* A message between threads; NULL when out of memory (then see worker_msg_must()). */
static struct worker_msg *worker_msg_new(enum worker_msg_type type)
{
	struct worker_msg *msg = calloc(1, sizeof(*msg));

	if (msg == NULL)
		return NULL;
	msg->type = type;
	msg->fd = -1;
	return msg;
}

/*
 * A message that must go: one lost would leave a client waiting for its
 * answer or a shutdown for its drain, and nothing smaller than the process
 * can fail instead, so out of memory aborts (util.h).
 */
static struct worker_msg *worker_msg_must(enum worker_msg_type type)
{
	struct worker_msg *msg = worker_msg_new(type);

	if (msg == NULL)
		out_of_memory("a message between threads");
	return msg;
}

int workers_active(void)
{
	return __atomic_load_n(&n_active, __ATOMIC_RELAXED);
}

/* The next of the active workers, in turn. */
static struct worker *next_active_worker(void)
{
	unsigned n = (unsigned)workers_active();

	if (n < 1 || n > (unsigned)n_workers)
		n = (unsigned)n_workers;
	return workers[__atomic_fetch_add(&next_worker, 1, __ATOMIC_RELAXED) % n];
}

void workers_dispatch_connection(int fd, const struct sockaddr *addr, socklen_t addrlen, enum pool_endpoint endpoint)
{
	struct worker *w = next_active_worker();
	struct worker_msg *msg = worker_msg_new(WORKER_MSG_CONNECTION);

	if (msg == NULL) {
		log_error("out of memory accepting a connection");
		close(fd);
		return;
	}
	msg->fd = fd;
	if (addrlen > sizeof(msg->addr))
		addrlen = sizeof(msg->addr);
	memcpy(&msg->addr, addr, addrlen);
	msg->addrlen = addrlen;
	msg->endpoint = endpoint;
	worker_post(w, msg);
}

/* A message whose only payload is an id (msg->client_id; a server's id for MIGRATE). */
static void worker_post_id(struct worker *w, enum worker_msg_type type, uint64_t id)
{
	struct worker_msg *msg = worker_msg_must(type);

	msg->client_id = id;
	worker_post(w, msg);
}

void worker_post_cancel(struct worker *w, uint64_t client_id)
{
	worker_post_id(w, WORKER_MSG_CANCEL, client_id);
}

void worker_post_admin_reply(struct worker *w, uint64_t client_id, bool ok, const char *text)
{
	struct worker_msg *msg = worker_msg_must(WORKER_MSG_ADMIN_REPLY);

	msg->client_id = client_id;
	msg->ok = ok;
	msg->text = xstrdup(text);
	worker_post(w, msg);
}

void worker_post_migrate(struct worker *w, uint64_t server_id)
{
	worker_post_id(w, WORKER_MSG_MIGRATE, server_id);
}

void worker_post_notify(struct worker *w, const uint64_t *ids, int n, const uint8_t *data, size_t len)
{
	struct worker_msg *msg = worker_msg_new(WORKER_MSG_NOTIFY);

	if (msg == NULL)
		return;
	msg->data = xmalloc(len);
	memcpy(msg->data, data, len);
	msg->data_len = len;
	msg->ids = xmalloc((size_t)n * sizeof(*ids));
	memcpy(msg->ids, ids, (size_t)n * sizeof(*ids));
	msg->n_ids = n;
	worker_post(w, msg);
}

void worker_post_listen_ready(struct worker *w, uint64_t client_id, const char *error)
{
	struct worker_msg *msg = worker_msg_new(WORKER_MSG_LISTEN_READY);

	if (msg == NULL)
		return;
	msg->client_id = client_id;
	msg->text = error ? xstrdup(error) : NULL;
	worker_post(w, msg);
}

void worker_post_kill(struct worker *w, uint64_t client_id)
{
	worker_post_id(w, WORKER_MSG_KILL, client_id);
}

void worker_post_adopt(struct worker *w, void *client)
{
	struct worker_msg *msg = worker_msg_must(WORKER_MSG_ADOPT);

	msg->client = client;
	worker_post(w, msg);
}

void workers_post_connect(struct pool *pool, struct target *target)
{
	struct worker *w = next_active_worker();
	struct worker_msg *msg = worker_msg_must(WORKER_MSG_CONNECT);

	msg->pool = pool;
	msg->target = target;
	worker_post(w, msg);
}

void workers_broadcast(enum worker_msg_type type)
{
	for (int i = 0; i < n_workers; i++)
		worker_post(workers[i], worker_msg_must(type));
}

/* The worker's own part of a message; the rest is its ops'. */
static void worker_handle_msg(struct worker *w, struct worker_msg *msg)
{
	switch (msg->type) {
	case WORKER_MSG_DRAIN:
		w->draining = true;
		break;
	case WORKER_MSG_STOP:
		w->stopping = true;
		event_del(w->janitor_event);
		break;
	default:
		break;
	}
	w->ops->message(w, msg);
}

static void worker_wake_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	struct list_node inbox, *node;

	w->activity++;

	list_init(&inbox);
	pthread_mutex_lock(&w->inbox_lock);
	if (!list_empty(&w->inbox)) {
		/* Splice the whole inbox out so the lock is held only for this. */
		inbox.next = w->inbox.next;
		inbox.prev = w->inbox.prev;
		inbox.next->prev = &inbox;
		inbox.prev->next = &inbox;
		list_init(&w->inbox);
	}
	pthread_mutex_unlock(&w->inbox_lock);

	while ((node = list_pop_front(&inbox)) != NULL) {
		struct worker_msg *msg = list_entry(node, struct worker_msg, node);

		worker_handle_msg(w, msg);
		worker_msg_free(msg);
	}

	w->ops->woken(w);

	if (w->stopping && list_empty(&w->clients) && list_empty(&w->servers))
		event_base_loopexit(w->base, NULL);
}

static void worker_reap_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	w->ops->reap(w);
	if (w->stopping && list_empty(&w->clients) && list_empty(&w->servers))
		event_base_loopexit(w->base, NULL);
}

static void worker_janitor_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	w->ops->janitor(w, pgmux_now_usec());
}

/*
 * Spreading clients over the workers (worker_spread_percent).
 *
 * Two half-busy loops each sleep in epoll_wait and are woken about twice as
 * often per transaction as one loop that sees every socket (bench/README.md,
 * issue 21: 0.83 against 0.39 voluntary context switches per transaction, a
 * sleep and a wake-up costing more than several system calls). So new
 * clients go to the first n_active workers only, one while that keeps up,
 * and the balancer takes one more in when the busiest active worker uses
 * more than the configured share of a CPU, or gives the last one back when
 * the others could carry everything at under 60 % of that share each (the
 * gap keeps it from flapping; a change waits SPREAD_SETTLE_NS after the
 * last one, a give-back SPREAD_GATHER_TICKS low readings in a row).
 * Clients move only when they fall idle between transactions
 * (worker_move_target(), client_consider_move()); the balancer sets each
 * worker's quota: all its clients for a worker outside the active ones,
 * those above its share for an active one, towards the active worker with
 * the fewest.
 */
#define SPREAD_SETTLE_NS (500 * 1000 * 1000ULL)
#define SPREAD_GATHER_TICKS 8

static uint64_t monotonic_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Every worker takes clients, and none gives any away. */
static void workers_take_all(void)
{
	__atomic_store_n(&n_active, n_workers, __ATOMIC_RELAXED);
	for (int i = 0; i < n_workers; i++)
		__atomic_store_n(&workers[i]->move_quota, 0, __ATOMIC_RELAXED);
}

void workers_spread_reloaded(void)
{
	if (workers != NULL && config_current()->worker_spread_percent == 0)
		workers_take_all();
}

void workers_balance(void)
{
	static uint64_t last_ns, changed_ns;
	static int low_ticks;
	const struct config *cfg = config_current();
	uint64_t now = monotonic_ns(), elapsed = now - last_ns;
	int active = workers_active(), dest = 0, total_clients = 0, share, slack, clients[MAX_WORKERS];
	double spread, busiest = 0, total_load = 0;

	if (workers == NULL || n_workers < 1)
		return;
	for (int i = 0; i < n_workers; i++) {
		struct worker *w = workers[i];
		struct timespec ts;
		uint64_t cpu;

		if (!w->cpu_clock_ok || clock_gettime(w->cpu_clock, &ts) != 0)
			continue;
		cpu = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
		if (last_ns != 0 && elapsed > 0 && cpu >= w->cpu_seen_ns)
			w->load = (w->load + (double)(cpu - w->cpu_seen_ns) / (double)elapsed) / 2;
		w->cpu_seen_ns = cpu;
	}
	last_ns = now;
	if (cfg->worker_spread_percent == 0 || n_workers == 1) {
		workers_take_all();
		return;
	}
	spread = cfg->worker_spread_percent / 100.0;
	if (active < 1 || active > n_workers)
		active = n_workers;
	for (int i = 0; i < n_workers; i++) {
		if (i < active && workers[i]->load > busiest)
			busiest = workers[i]->load;
		total_load += workers[i]->load;
	}
	if (active < n_workers && busiest > spread && now - changed_ns >= SPREAD_SETTLE_NS) {
		active++;
		changed_ns = now;
		low_ticks = 0;
		log_info("workers: %d take clients (the busiest used %.0f%% of a CPU)", active, busiest * 100);
	} else if (active > 1 && total_load < 0.6 * spread * (active - 1)) {
		if (++low_ticks >= SPREAD_GATHER_TICKS && now - changed_ns >= SPREAD_SETTLE_NS) {
			active--;
			changed_ns = now;
			low_ticks = 0;
			log_info("workers: %d take clients (all of them used %.0f%% of a CPU)", active, total_load * 100);
		}
	} else {
		low_ticks = 0;
	}
	__atomic_store_n(&n_active, active, __ATOMIC_RELAXED);

	/* Quotas: everything off the inactive workers, the excess off the active ones (one reading of the counts). */
	for (int i = 0; i < n_workers; i++) {
		clients[i] = __atomic_load_n(&workers[i]->n_clients, __ATOMIC_RELAXED);
		total_clients += clients[i];
		if (i < active && clients[i] < clients[dest])
			dest = i;
	}
	share = (total_clients + active - 1) / active;
	slack = share / 16 > 1 ? share / 16 : 1;
	for (int i = 0; i < n_workers; i++) {
		struct worker *w = workers[i];
		int n = clients[i], quota = 0;

		if (i >= active)
			quota = n;
		else if (i != dest && n > share + slack)
			quota = n - share;
		__atomic_store_n(&w->move_to, dest, __ATOMIC_RELAXED);
		__atomic_store_n(&w->move_quota, i == dest ? 0 : quota, __ATOMIC_RELAXED);
	}
}

struct worker *worker_move_target(struct worker *w)
{
	int to;

	if (__atomic_load_n(&w->move_quota, __ATOMIC_RELAXED) <= 0 || w->draining || w->stopping ||
	    w->n_moving >= (int)(sizeof(w->moving) / sizeof(w->moving[0])))
		return NULL;
	to = __atomic_load_n(&w->move_to, __ATOMIC_RELAXED);
	if (to < 0 || to >= n_workers || to == w->id)
		return NULL;
	__atomic_sub_fetch(&w->move_quota, 1, __ATOMIC_RELAXED);
	return workers[to];
}

/*
 * Busy polling: while this worker has at most BUSY_POLL_MAX_BUSY sessions in
 * a transaction or waiting for a backend, it polls its sockets without
 * sleeping for up to busy_poll_us after the last event, instead of blocking
 * in epoll_wait. A reply or a query that arrives within the window is then
 * handled at once: no wake-up of a sleeping thread (and of an idle CPU), which
 * is most of the latency a proxy adds. With more sessions in flight events
 * arrive often enough without it, and the CPU is better left to the others.
 */
#define BUSY_POLL_MAX_BUSY 2
/* How long a verdict on the machine's load stands. */
#define BUSY_POLL_RECHECK_USEC 1000

static int loadavg_fd = -1; /* /proc/loadavg, read with pread by every worker */
static long n_cpus = 1;

/*
 * Polling only pays while a CPU would otherwise sit idle: true if no more
 * threads are runnable on the machine than it has CPUs (the fourth field of
 * /proc/loadavg, "running/total", counts this thread too). Without
 * /proc/loadavg, assume there is room.
 */
static bool machine_has_idle_cpu(void)
{
	char buf[128];
	ssize_t n;
	const char *p;
	int fields = 0;

	if (loadavg_fd < 0)
		return true;
	n = pread(loadavg_fd, buf, sizeof(buf) - 1, 0);
	if (n <= 0)
		return true;
	buf[n] = '\0';
	for (p = buf; *p && fields < 3; p++)
		if (*p == ' ')
			fields++;
	return strtol(p, NULL, 10) <= n_cpus;
}

/* The machine's load allows polling (looked at no more than once per BUSY_POLL_RECHECK_USEC). */
static bool worker_may_poll(struct worker *w, uint64_t now)
{
	if (now - w->busy_poll_checked >= BUSY_POLL_RECHECK_USEC) {
		w->busy_poll_checked = now;
		w->busy_poll_ok = machine_has_idle_cpu();
	}
	return w->busy_poll_ok;
}

/*
 * One pass of the loop: the callbacks of the events that are ready (waiting
 * for one first unless flags say EVLOOP_NONBLOCK), then the sends they left
 * for the end of the pass, in one system call (batch_sends; io_batch.c).
 */
static void worker_pass(struct worker *w, int flags)
{
	int sent;

	/* Between passes no callback runs, so no pointer into a configuration is held. */
	config_reader_quiescent(w->config_reader);
	pgmux_pass_begin(); /* "now" is read again after the wait (pgmux.h) */
	io_batch_begin(config_current()->batch_sends);
	event_base_loop(w->base, flags);
	sent = io_batch_end();
	if (sent > 0) {
		STAT_INC(w, send_batches);
		STAT_ADD(w, batched_sends, (uint64_t)sent);
	}
}

static bool worker_busy_poll(struct worker *w)
{
	int window = config_current()->busy_poll_us;
	unsigned long seen = w->activity;
	uint64_t now, until;

	if (window <= 0 || w->n_busy > BUSY_POLL_MAX_BUSY)
		return true;
	now = pgmux_now_usec();
	if (!worker_may_poll(w, now))
		return true;
	until = now + (uint64_t)window;
	do {
		worker_pass(w, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		if (event_base_got_exit(w->base))
			return false;
		if (w->activity != seen) {
			seen = w->activity;
			if (w->n_busy > BUSY_POLL_MAX_BUSY)
				break;
			now = pgmux_now_usec();
			if (!worker_may_poll(w, now))
				break;
			until = now + (uint64_t)window;
		}
	} while (pgmux_now_usec() < until);
	return true;
}

static void worker_run(struct worker *w)
{
	for (;;) {
		if (!worker_busy_poll(w))
			return;
		worker_pass(w, EVLOOP_ONCE | EVLOOP_NO_EXIT_ON_EMPTY);
		if (event_base_got_exit(w->base))
			return;
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	char name[16];

	current_worker = w;
	w->config_reader = config_reader_register();
	snprintf(name, sizeof(name), "worker-%d", w->id);
	pthread_setname_np(pthread_self(), name);
	log_debug("worker %d started", w->id);
	worker_run(w);
	io_batch_thread_exit();
	log_debug("worker %d stopped", w->id);
	return NULL;
}

static void worker_destroy(struct worker *w)
{
	struct list_node *node;

	while ((node = list_pop_front(&w->inbox)) != NULL) {
		struct worker_msg *msg = list_entry(node, struct worker_msg, node);

		/* A client moved here after this worker stopped: its ops close and free it. */
		if (msg->type == WORKER_MSG_ADOPT && w->base) {
			w->stopping = true;
			w->ops->message(w, msg);
			w->ops->reap(w);
		}
		if (msg->fd >= 0)
			close(msg->fd);
		worker_msg_free(msg);
	}
	iobuf_free(&w->scratch);
	if (w->janitor_event)
		event_free(w->janitor_event);
	if (w->borrow_timer)
		event_free(w->borrow_timer);
	if (w->wake_event)
		event_free(w->wake_event);
	if (w->wake_fd_event)
		event_free(w->wake_fd_event);
	if (w->wake_fd >= 0)
		close(w->wake_fd);
	if (w->reap_event)
		event_free(w->reap_event);
	if (w->dns)
		evdns_base_free(w->dns, 1);
	if (w->base)
		event_base_free(w->base);
	pthread_mutex_destroy(&w->inbox_lock);
	free(w);
}

static struct worker *worker_create(int id, const struct worker_ops *ops)
{
	struct worker *w = calloc(1, sizeof(*w));
	struct event_config *ecfg;

	if (w == NULL)
		return NULL;
	w->id = id;
	w->ops = ops;
	w->wake_fd = -1;
	iobuf_init(&w->scratch);
	iobuf_reserve(&w->scratch, 32 * 1024);
	pthread_mutex_init(&w->inbox_lock, NULL);
	list_init(&w->inbox);
	list_init(&w->ready);
	list_init(&w->clients);
	list_init(&w->servers);
	list_init(&w->reap_clients);
	list_init(&w->reap_servers);
	list_init(&w->borrow_waits);
	ecfg = event_config_new();
	if (ecfg == NULL)
		goto fail;
	/* Only this worker's thread uses the base (worker_wake()). */
	event_config_set_flag(ecfg, EVENT_BASE_FLAG_NOLOCK);
	/*
	 * One priority for every event. A wake-up posted during a pass (a
	 * backend given to a client of this worker) then runs in that same pass:
	 * with the wake event ahead of the I/O events, as it used to be, it
	 * waited for the next pass, which cost an epoll_wait, sometimes two. The
	 * reaper runs after the callbacks already queued when it was scheduled,
	 * and a freed object's events are gone from the queue by then.
	 */
	w->base = event_base_new_with_config(ecfg);
	event_config_free(ecfg);
	if (w->base == NULL)
		goto fail;
	w->dns = evdns_base_new(w->base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	if (w->dns == NULL) {
		/* No resolv.conf: numeric addresses and /etc/hosts still work. */
		w->dns = evdns_base_new(w->base, 0);
		if (w->dns == NULL)
			goto fail;
		evdns_base_load_hosts(w->dns, NULL);
	}
	w->wake_event = event_new(w->base, -1, 0, worker_wake_cb, w);
	w->reap_event = event_new(w->base, -1, 0, worker_reap_cb, w);
	if (w->wake_event == NULL || w->reap_event == NULL)
		goto fail;
	w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->wake_fd < 0)
		goto fail;
	w->wake_fd_event = event_new(w->base, w->wake_fd, EV_READ | EV_PERSIST, worker_wake_fd_cb, w);
	if (w->wake_fd_event == NULL || event_add(w->wake_fd_event, NULL) != 0)
		goto fail;
	w->janitor_event = event_new(w->base, -1, EV_PERSIST, worker_janitor_cb, w);
	if (w->janitor_event == NULL)
		goto fail;
	{
		struct timeval second = { 1, 0 };

		event_add(w->janitor_event, &second);
	}
	return w;
fail:
	worker_destroy(w);
	return NULL;
}

int workers_start(int n, const struct worker_ops *ops)
{
	workers = calloc((size_t)n, sizeof(*workers));
	if (workers == NULL)
		return -1;
	n_cpus = sysconf(_SC_NPROCESSORS_ONLN);
	if (n_cpus < 1)
		n_cpus = 1;
	loadavg_fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
	for (int i = 0; i < n; i++) {
		workers[i] = worker_create(i, ops);
		if (workers[i] == NULL) {
			log_error("cannot create worker %d", i);
			return -1;
		}
		n_workers = i + 1;
	}
	n_active = config_current()->worker_spread_percent > 0 ? 1 : n;
	for (int i = 0; i < n; i++) {
		int rc = pthread_create(&workers[i]->thread, NULL, worker_main, workers[i]);

		if (rc != 0) {
			log_error("cannot start worker thread %d: %s", i, strerror(rc));
			return -1;
		}
		workers[i]->cpu_clock_ok = pthread_getcpuclockid(workers[i]->thread, &workers[i]->cpu_clock) == 0;
	}
	return 0;
}

void workers_stop(void)
{
	if (workers == NULL)
		return;
	workers_broadcast(WORKER_MSG_STOP);
	for (int i = 0; i < n_workers; i++)
		pthread_join(workers[i]->thread, NULL);
	for (int i = 0; i < n_workers; i++)
		worker_destroy(workers[i]);
	free(workers);
	workers = NULL;
	n_workers = 0;
	if (loadavg_fd >= 0) {
		close(loadavg_fd);
		loadavg_fd = -1;
	}
}
