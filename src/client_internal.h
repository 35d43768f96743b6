/*
 * client_internal.h: what the two files of the client module, client.c
 * (the connection's life, its state machine and its input) and
 * client_backend.c (the backend serving it), share. Not for other modules.
 */
#ifndef PGMUX_CLIENT_INTERNAL_H
#define PGMUX_CLIENT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client.h"
#include "reply.h"

/*
 * Stop reading from a client while this much output waits for it: one that
 * sends and never reads (Syncs pgmux answers alone, say) would grow it for
 * good. Reading resumes once the output has gone (client_flush()). The
 * backend stops reading for it too (its congested callback).
 */
#define CLIENT_OUTPUT_HIGH_WATER (256 * 1024)

/* A transaction lost with its backend, when the server said nothing (client_server_lost()). */
#define CLIENT_LOST_TRANSACTION_MESSAGE "the connection to the database server was lost; the transaction was rolled back"

/*
 * What a client sends in a transaction is kept, as it sent it, up to its
 * first answer (or this many bytes): should the backend end its session
 * before answering any of it, for a reason that says it was idle, the batch
 * goes to another backend, at most CLIENT_MAX_RESENDS times.
 */
#define CLIENT_RESEND_MAX 16384
#define CLIENT_MAX_RESENDS 2

/* client.c */

/* The one place a client changes state (checked and logged). */
void client_set_state(struct client *c, enum client_state next);
/* A FATAL error with an optional DETAIL, then close. */
void client_fatal_detail(struct client *c, const char *sqlstate, const char *message, const char *detail);
/* Act on buffered input for the current state, as long as it moves on; false if c was closed. */
bool client_process_input(struct client *c);
/*
 * Something other than the client's input moved c on: act on what it sent
 * meanwhile. Only at the end of such an event, never from inside
 * client_process_input().
 */
void client_resume(struct client *c);
/* The custom parameters noted since the last read-back are read now, or never. */
void client_drop_custom_pending(struct client *c);

/* client_backend.c */

/* What the reply tracker asks of a client's session (relay_init()). */
extern const struct reply_hooks client_reply_hooks;
/* Ask the pool for a backend; the client is WAITING. */
void client_borrow(struct client *c);
/* Free c's borrow-wait entry: closing, off its worker's list first; else only if it is not waiting. */
void client_wait_free(struct client *c, bool closing);
/* Whether c is on its worker's borrow-wait list (its connection_borrow_timeout runs). */
bool client_wait_queued(const struct client *c);
/* A logged-in client needs a backend for the transaction it just started. */
void client_begin_transaction(struct client *c);
/* A Parse no backend of the pool has judged: borrow one, or answer it unjudged. False if c was closed or waits. */
bool client_borrow_for_parse(struct client *c);
/* Answer a batch no backend could be had for: an ErrorResponse, its messages dropped up to its Sync. */
void client_fail_batch(struct client *c, const char *sqlstate, const char *message);
void client_fail_batch_detail(struct client *c, const char *sqlstate, const char *message, const char *detail);
/* The session keeps its backend (pin), which goes on serving it; the held ReadyForQuery goes out. */
void client_keep_backend(struct client *c, const struct sql_scan_result *pin);
/* Forget the error kept for a lost transaction (c->lost). */
void client_lost_free(struct client *c);
/* n bytes at p that the client's backend was just sent: kept while batch_recording (client_server_lost()). */
void client_record_batch(struct client *c, const uint8_t *p, size_t n);

#endif
