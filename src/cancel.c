/*
 * cancel.c: the cancel-key registry and the cancel helper thread (see
 * cancel.h). The registry is a small hash table under its own lock; the
 * helper thread drains a queue of PGcancel objects with PQcancel, the one
 * libpq 15 call for this, which connects and writes synchronously.
 */
#include "cancel.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "log.h"
#include "util.h"

#define CANCEL_BUCKETS 4096

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct list_node registry[CANCEL_BUCKETS];
static bool registry_ready;
static uint32_t next_pid;

struct cancel_job {
	struct list_node node;
	PGcancel *pg_cancel;
	uint64_t client_id;
	int backend_pid;
};

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_cond = PTHREAD_COND_INITIALIZER;
static struct list_node queue = LIST_HEAD_INIT(queue);
static bool queue_stop;
static bool thread_running;
static pthread_t cancel_thread;

static struct list_node *bucket_for(uint32_t pid)
{
	return &registry[pid % CANCEL_BUCKETS];
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
	auth_random_bytes(&entry->key, sizeof(entry->key));
	entry->worker = worker;
	entry->client_id = client_id;
	list_append(bucket_for(entry->pid), &entry->node);
	pthread_mutex_unlock(&registry_lock);
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

		struct cancel_job *job = list_entry(node, struct cancel_job, node);
		char errbuf[256];

		if (!PQcancel(job->pg_cancel, errbuf, sizeof(errbuf)))
			log_warning("C-%llu: cancel request to backend pid %d failed: %s",
				    (unsigned long long)job->client_id, job->backend_pid, errbuf);
		else
			log_debug("C-%llu: cancel request sent to backend pid %d", (unsigned long long)job->client_id,
				  job->backend_pid);
		PQfreeCancel(job->pg_cancel);
		free(job);
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
	pthread_mutex_lock(&queue_lock);
	list_append(&queue, &job->node);
	pthread_cond_signal(&queue_cond);
	pthread_mutex_unlock(&queue_lock);
}
