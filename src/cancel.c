/*
 * cancel.c: the cancel-key registry and the cancel helper thread (see
 * cancel.h). The registry is a small hash table under its own lock; the
 * helper thread drains a queue of PGcancel objects with PQcancel, the one
 * libpq 15 call for this, which connects and writes synchronously.
 */
#include "cancel.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth.h"
#include "iobuf.h"
#include "log.h"
#include "proto.h"
#include "util.h"

#define CANCEL_BUCKETS 4096

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct list_node registry[CANCEL_BUCKETS];
static bool registry_ready;
static uint32_t next_pid;
static uint32_t instance_id; /* peer_id; fixed before the first client */

/* A cancel for a backend (pg_cancel), or one to pass on to a peer (host set). */
struct cancel_job {
	struct list_node node;
	PGcancel *pg_cancel;
	uint64_t client_id;
	int backend_pid;
	char *host;
	int port;
	int peer_id;
	uint32_t pid;
	uint32_t key;
};

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_cond = PTHREAD_COND_INITIALIZER;
static struct list_node queue = LIST_HEAD_INIT(queue);
static bool queue_stop;
static int forwards_queued; /* cancels for peers waiting in queue (queue lock) */
static bool thread_running;
static pthread_t cancel_thread;

static struct list_node *bucket_for(uint32_t pid)
{
	return &registry[pid % CANCEL_BUCKETS];
}

void cancel_set_instance_id(int id)
{
	instance_id = (uint32_t)id;
}

int cancel_key_instance(uint32_t pid)
{
	if (instance_id == 0)
		return 0;
	return (int)((pid >> CANCEL_INSTANCE_SHIFT) & 0xff);
}

void cancel_register(struct cancel_entry *entry, struct worker *worker, uint64_t client_id)
{
	pthread_mutex_lock(&registry_lock);
	if (!registry_ready) {
		for (int i = 0; i < CANCEL_BUCKETS; i++)
			list_init(&registry[i]);
		auth_random_bytes(&next_pid, sizeof(next_pid));
		registry_ready = true;
	}
	/* Keys look like PostgreSQL's: a positive pid and a random secret. */
	next_pid = (next_pid + 1) & 0x7fffffff;
	if (next_pid == 0)
		next_pid = 1;
	entry->pid = next_pid;
	if (instance_id != 0) {
		const uint32_t counter_mask = (1u << CANCEL_INSTANCE_SHIFT) - 1;

		if ((next_pid & counter_mask) == 0)
			next_pid++;
		entry->pid = (instance_id << CANCEL_INSTANCE_SHIFT) | (next_pid & counter_mask);
	}
	auth_random_bytes(&entry->key, sizeof(entry->key));
	entry->worker = worker;
	entry->client_id = client_id;
	list_append(bucket_for(entry->pid), &entry->node);
	pthread_mutex_unlock(&registry_lock);
}

void cancel_move(struct cancel_entry *entry, struct worker *worker, void (*then)(void *arg), void *arg)
{
	pthread_mutex_lock(&registry_lock);
	entry->worker = worker;
	then(arg);
	pthread_mutex_unlock(&registry_lock);
}

struct worker *cancel_worker_of(uint64_t client_id)
{
	struct worker *found = NULL;

	pthread_mutex_lock(&registry_lock);
	for (int i = 0; registry_ready && i < CANCEL_BUCKETS && found == NULL; i++) {
		struct list_node *pos;

		list_for_each(pos, &registry[i]) {
			struct cancel_entry *e = list_entry(pos, struct cancel_entry, node);

			if (e->client_id == client_id) {
				found = e->worker;
				break;
			}
		}
	}
	pthread_mutex_unlock(&registry_lock);
	return found;
}

void cancel_unregister(struct cancel_entry *entry)
{
	pthread_mutex_lock(&registry_lock);
	if (list_linked(&entry->node))
		list_del(&entry->node);
	pthread_mutex_unlock(&registry_lock);
}

bool cancel_lookup(uint32_t pid, uint32_t key, struct worker **worker, uint64_t *client_id)
{
	struct list_node *pos;
	bool found = false;

	pthread_mutex_lock(&registry_lock);
	if (registry_ready) {
		list_for_each(pos, bucket_for(pid)) {
			struct cancel_entry *entry = list_entry(pos, struct cancel_entry, node);

			if (entry->pid == pid && entry->key == key) {
				/* Fixed while registered; the client itself is its worker's. */
				*worker = entry->worker;
				*client_id = entry->client_id;
				found = true;
				break;
			}
		}
	}
	pthread_mutex_unlock(&registry_lock);
	return found;
}

void cancel_for_each_entry(void (*fn)(struct cancel_entry *entry, void *arg), void *arg)
{
	struct list_node *pos;

	pthread_mutex_lock(&registry_lock);
	if (registry_ready)
		for (int i = 0; i < CANCEL_BUCKETS; i++)
			list_for_each(pos, &registry[i])
				fn(list_entry(pos, struct cancel_entry, node), arg);
	pthread_mutex_unlock(&registry_lock);
}

/*
 * Connect to host:port within CANCEL_FORWARD_TIMEOUT_MS and write a
 * CancelRequest for (pid, key). Runs on the cancel thread. Returns NULL, or
 * why it failed.
 */
static const char *send_cancel_request(const char *host, int port, uint32_t pid, uint32_t key, char *why,
				       size_t whylen)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV }, *res = NULL;
	struct iobuf request;
	char service[16];
	int fd = -1, rc;
	const char *failure = NULL;

	snprintf(service, sizeof(service), "%d", port);
	if ((rc = getaddrinfo(host, service, &hints, &res)) != 0) {
		snprintf(why, whylen, "cannot resolve %s: %s", host, gai_strerror(rc));
		return why;
	}
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		failure = strerror(errno);
	} else if (connect(fd, res->ai_addr, res->ai_addrlen) != 0 && errno != EINPROGRESS) {
		failure = strerror(errno);
	} else {
		struct pollfd pfd = { .fd = fd, .events = POLLOUT };
		int err = 0;
		socklen_t errlen = sizeof(err);

		do
			rc = poll(&pfd, 1, CANCEL_FORWARD_TIMEOUT_MS);
		while (rc < 0 && errno == EINTR);
		if (rc == 0)
			failure = "connect timed out";
		else if (rc < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) != 0)
			failure = strerror(errno);
		else if (err != 0)
			failure = strerror(err);
		else {
			iobuf_init(&request);
			proto_put_cancel_request(&request, pid, key);
			if (request.failed || send(fd, iobuf_head(&request), iobuf_len(&request), MSG_NOSIGNAL) !=
						      (ssize_t)iobuf_len(&request))
				failure = "short write";
			iobuf_free(&request);
		}
	}
	if (fd >= 0)
		close(fd);
	freeaddrinfo(res);
	if (failure == NULL)
		return NULL;
	snprintf(why, whylen, "%s", failure);
	return why;
}

static void run_job(struct cancel_job *job)
{
	char errbuf[256];

	if (job->host != NULL) {
		pthread_mutex_lock(&queue_lock);
		forwards_queued--;
		pthread_mutex_unlock(&queue_lock);
		if (send_cancel_request(job->host, job->port, job->pid, job->key, errbuf, sizeof(errbuf)) != NULL)
			log_warning("cancel request for peer %d at %s:%d could not be passed on: %s", job->peer_id,
				    job->host, job->port, errbuf);
		else
			log_debug("cancel request passed on to peer %d at %s:%d", job->peer_id, job->host, job->port);
		free(job->host);
	} else {
		if (!PQcancel(job->pg_cancel, errbuf, sizeof(errbuf)))
			log_warning("C-%llu: cancel request to backend pid %d failed: %s",
				    (unsigned long long)job->client_id, job->backend_pid, errbuf);
		else
			log_debug("C-%llu: cancel request sent to backend pid %d",
				  (unsigned long long)job->client_id, job->backend_pid);
		PQfreeCancel(job->pg_cancel);
	}
	free(job);
}

static void queue_job(struct cancel_job *job)
{
	pthread_mutex_lock(&queue_lock);
	list_append(&queue, &job->node);
	pthread_cond_signal(&queue_cond);
	pthread_mutex_unlock(&queue_lock);
}

static void *cancel_main(void *arg)
{
	pthread_setname_np(pthread_self(), "cancel");
	pthread_mutex_lock(&queue_lock);
	for (;;) {
		struct list_node *node;

		while (!queue_stop && list_empty(&queue))
			pthread_cond_wait(&queue_cond, &queue_lock);
		node = list_pop_front(&queue);
		if (node == NULL)
			break; /* stopping and nothing left */
		pthread_mutex_unlock(&queue_lock);

		run_job(list_entry(node, struct cancel_job, node));
		pthread_mutex_lock(&queue_lock);
	}
	pthread_mutex_unlock(&queue_lock);
	return NULL;
}

int cancel_thread_start(void)
{
	queue_stop = false;
	if (pthread_create(&cancel_thread, NULL, cancel_main, NULL) != 0)
		return -1;
	thread_running = true;
	return 0;
}

void cancel_thread_stop(void)
{
	if (!thread_running)
		return;
	pthread_mutex_lock(&queue_lock);
	queue_stop = true;
	pthread_cond_signal(&queue_cond);
	pthread_mutex_unlock(&queue_lock);
	pthread_join(cancel_thread, NULL);
	thread_running = false;
}

void cancel_submit(PGcancel *pg_cancel, uint64_t client_id, int backend_pid)
{
	struct cancel_job *job = xcalloc(1, sizeof(*job));

	job->pg_cancel = pg_cancel;
	job->client_id = client_id;
	job->backend_pid = backend_pid;
	queue_job(job);
}

void cancel_forward(int peer_id, const char *host, int port, uint32_t pid, uint32_t key)
{
	struct cancel_job *job = xcalloc(1, sizeof(*job));

	job->host = xstrdup(host);
	job->peer_id = peer_id;
	job->port = port;
	job->pid = pid;
	job->key = key;
	/*
	 * A peer that does not answer holds the thread for up to
	 * CANCEL_FORWARD_TIMEOUT_MS per request: a flood of keys naming it must
	 * not delay the cancels of this instance's own clients for long.
	 */
	pthread_mutex_lock(&queue_lock);
	if (forwards_queued >= CANCEL_FORWARDS_QUEUED_MAX) {
		pthread_mutex_unlock(&queue_lock);
		log_warning("cancel request for peer %d dropped: %d are already waiting to be passed on", peer_id,
			    CANCEL_FORWARDS_QUEUED_MAX);
		free(job->host);
		free(job);
		return;
	}
	forwards_queued++;
	pthread_mutex_unlock(&queue_lock);
	queue_job(job);
}
