/*
 * cancel.h: CancelRequest handling. pgmux gives every client its own
 * (pid, key) pair; the registry maps it back to the client and its worker.
 * Sending the cancel to PostgreSQL uses libpq's PQcancel, which blocks, so it
 * runs on a dedicated helper thread and never on an event loop; so does
 * passing a cancel on to the peer instance whose key it names.
 */
#ifndef PGMUX_CANCEL_H
#define PGMUX_CANCEL_H

#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "list.h"

struct worker;

/*
 * A logged-in client's entry in the registry, embedded in the client (list_init
 * its node first): its (pid, key) pair, sent to it as BackendKeyData, and
 * where to find it. Fixed while registered.
 */
struct cancel_entry {
	struct list_node node; /* a registry bucket (registry lock) */
	uint32_t pid;
	uint32_t key;
	struct worker *worker;
	uint64_t client_id;
};

/*
 * With peers (peer_id), a key's pid carries the instance that gave it:
 * bits 23 to 30 hold the id (1..255), bits 0 to 22 a counter, so the pid
 * stays positive as PostgreSQL's are. Without peers (id 0) pids are a
 * plain counter from a random start. Set once, before the first client.
 */
#define CANCEL_INSTANCE_SHIFT 23
void cancel_set_instance_id(int id);
/* The instance a key's pid names (0 when this instance has no peers). */
int cancel_key_instance(uint32_t pid);

/* Give the client client_id, which lives on worker, a fresh (pid, key) and make it findable. */
void cancel_register(struct cancel_entry *entry, struct worker *worker, uint64_t client_id);
void cancel_unregister(struct cancel_entry *entry);
/*
 * The client moved to another worker (client_move()): cancels and KILLs go
 * there from now on. then(arg) runs under the registry's lock right after,
 * so that whoever looks the entry up and posts to the new worker posts
 * after what then posted there (the client itself).
 */
void cancel_move(struct cancel_entry *entry, struct worker *worker, void (*then)(void *arg), void *arg);
/* The worker a registered client is on now, or NULL (it left); a scan, for the rare miss. */
struct worker *cancel_worker_of(uint64_t client_id);

/* Find the client a CancelRequest names; false for unknown keys. */
bool cancel_lookup(uint32_t pid, uint32_t key, struct worker **worker, uint64_t *client_id);

/* Call fn for every logged-in client's entry, under the registry lock (SHOW CLIENTS, KILL). */
void cancel_for_each_entry(void (*fn)(struct cancel_entry *entry, void *arg), void *arg);

int cancel_thread_start(void);
void cancel_thread_stop(void);

/* Queue a cancel; takes ownership of pg_cancel (from PQgetCancel). */
void cancel_submit(PGcancel *pg_cancel, uint64_t client_id, int backend_pid);

/*
 * Queue a CancelRequest for (pid, key) to the pgmux instance peer_id at
 * host:port (its listen port): the cancel thread resolves the name, connects
 * (at most CANCEL_FORWARD_TIMEOUT_MS) and writes the 16 bytes, as a client
 * would. Nothing waits for it on an event loop.
 */
#define CANCEL_FORWARD_TIMEOUT_MS 2000
#define CANCEL_FORWARDS_QUEUED_MAX 64 /* more waiting are dropped, with a warning */
void cancel_forward(int peer_id, const char *host, int port, uint32_t pid, uint32_t key);

#endif
