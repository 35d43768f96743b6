/*
 * reply.c: the reply tracker (see reply.h). Every message pgmux sends a
 * backend for a transaction-pooled client enters the backend's queue of
 * pending replies as what it expects back (enum reply_kind), so that replies
 * can be matched with what caused them: relayed, swallowed (the reply to a
 * message of pgmux's own) or replaced by one pgmux owes the client. After an
 * error PostgreSQL skips everything up to the next Sync; skipped_to_sync()
 * undoes what pgmux assumed for those messages. A message of a later batch
 * that depends on such an answer waits for it (REPLY_WAIT).
 */
#include "reply.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "params.h"
#include "proto.h"
#include "sqlscan.h"
#include "util.h"

_Static_assert(sizeof(((struct pending_reply *)0)->client_name) == REPLY_STMT_KEY_LEN + 1,
	       "the reply queue must hold a whole statement key");

static const char *const reply_kind_names[] = {
	[REPLY_PARSE] = "parse",
	[REPLY_BIND] = "bind",
	[REPLY_DESCRIBE] = "describe",
	[REPLY_EXECUTE] = "execute",
	[REPLY_CLOSE] = "close",
	[REPLY_SYNC] = "sync",
	[REPLY_QUERY] = "query",
	[REPLY_FUNCTION_CALL] = "function-call",
	[REPLY_FLUSH_REFUSED] = "flush-refused",
	[REPLY_PARSE_REFUSED] = "parse-refused",
	[REPLY_OWN_PARSE] = "own-parse",
	[REPLY_OWN_CLOSE] = "own-close",
	[REPLY_OWN_UNNAMED_CLOSE] = "own-unnamed-close",
	[REPLY_OWED_PARSE] = "owed-parse",
	[REPLY_OWED_CLOSE] = "owed-close",
};

const char *reply_kind_name(enum reply_kind kind)
{
	return kind < sizeof(reply_kind_names) / sizeof(reply_kind_names[0]) ? reply_kind_names[kind] : "?";
}

void reply_session_init(struct reply_session *rs, const struct reply_hooks *hooks, void *hook_arg)
{
	memset(rs, 0, sizeof(*rs));
	rs->hooks = hooks;
	rs->hook_arg = hook_arg;
}

struct reply_names *reply_names_make(struct reply_session *rs)
{
	if (rs->names == NULL) {
		rs->names = xmalloc(sizeof(*rs->names));
		strmap_init(&rs->names->stmts);
		strmap_init(&rs->names->stmt_names);
	}
	return rs->names;
}

/*
 * Note which of the client's statements server_name stands for (its error
 * texts name the client's statement, reply_translate_error()). An entry
 * outlives its statement (a Close, DEALLOCATE or DEALLOCATE ALL does not
 * look here), so when the map reaches twice the statements the client holds
 * (and a few), the entries of statements it no longer holds go: like the
 * statements, the map stays bounded by max_client_prepared_statements.
 */
void reply_note_stmt_name(struct reply_session *rs, const struct prepared_stmt *st, const char *key)
{
	struct reply_names *n = reply_names_make(rs);

	if (n->stmt_names.count >= 2 * n->stmts.count + STMT_NAMES_SLACK) {
		struct list_node *pos, *tmp;

		list_for_each_safe(pos, tmp, &n->stmt_names.lru) {
			struct strmap_entry *e = list_entry(pos, struct strmap_entry, lru);
			struct strmap_entry *held = strmap_find(&n->stmts, e->value);

			if (held == NULL || strcasecmp(((struct prepared_stmt *)held->value)->server_name, e->key) != 0)
				free(strmap_delete(&n->stmt_names, e));
		}
	}
	params_put(&n->stmt_names, st->server_name, key);
}

void reply_session_free(struct reply_session *rs)
{
	if (rs->names) {
		strmap_clear(&rs->names->stmts, prepared_free);
		params_clear(&rs->names->stmt_names);
		free(rs->names);
		rs->names = NULL;
	}
	free(rs->unnamed_parse);
	rs->unnamed_parse = NULL;
	rs->unnamed_parse_len = rs->unnamed_parse_cap = 0;
}

void reply_tracker_init(struct reply_tracker *t, struct strmap *statements)
{
	memset(t, 0, sizeof(*t));
	t->statements = statements;
}

void reply_link(struct reply_tracker *t, struct reply_session *rs, bool tracking)
{
	t->session = rs;
	t->tracking = tracking;
	rs->unnamed_here = false;
}

void reply_unlink(struct reply_tracker *t)
{
	if (t->session)
		t->session->reset_all_pending = false;
	t->session = NULL;
	t->tracking = false;
}

/* ------------------------------------------------------------ the queue */

static struct pending_reply *reply_front(struct reply_tracker *t)
{
	return t->count ? &t->items[t->head] : NULL;
}

/* The i-th entry from the front (i < count). */
static struct pending_reply *reply_at(const struct reply_tracker *t, uint32_t i)
{
	return &t->items[(t->head + i) % t->cap];
}

static void reply_pop(struct reply_tracker *t)
{
	t->head = (t->head + 1) % t->cap;
	t->count--;
}

void reply_tracker_free(struct reply_tracker *t)
{
	while (t->count > 0) {
		prepared_free(reply_front(t)->closed);
		reply_pop(t);
	}
	free(t->items);
	t->items = NULL;
	t->cap = t->head = 0;
}

/*
 * False when memory ran out: to_server is then marked failed, so that its
 * backend is closed at its next flush, before any reply could be matched
 * with the wrong message (see iobuf.h); the client gets the error of a lost
 * backend.
 */
static bool reply_push(struct reply_tracker *t, enum reply_kind kind, const char *name, struct iobuf *to_server)
{
	struct pending_reply *r;

	if (t->count == t->cap) {
		uint32_t cap = t->cap ? t->cap * 2 : 16;
		struct pending_reply *items = malloc(sizeof(*items) * cap);

		if (items == NULL) {
			to_server->failed = true;
			return false;
		}
		/* Unwrap the ring into the new array. */
		for (uint32_t i = 0; i < t->count; i++)
			items[i] = t->items[(t->head + i) % t->cap];
		free(t->items);
		t->items = items;
		t->cap = cap;
		t->head = 0;
	}
	r = &t->items[(t->head + t->count) % t->cap];
	r->kind = kind;
	if (name)
		snprintf(r->name, sizeof(r->name), "%s", name);
	else
		r->name[0] = '\0';
	r->client_name[0] = '\0';
	r->closed = NULL;
	t->count++;
	return true;
}

/* The entry just pushed (to add details). */
static struct pending_reply *reply_back(struct reply_tracker *t)
{
	return reply_at(t, t->count - 1);
}

size_t reply_take_owed(struct reply_tracker *t, uint8_t *out, size_t cap)
{
	size_t n = 0;

	while (n + PROTO_HEADER_LEN <= cap && reply_owed_due(t)) {
		struct pending_reply *r = reply_front(t);

		out[n] = r->kind == REPLY_OWED_PARSE ? BE_PARSE_COMPLETE : BE_CLOSE_COMPLETE;
		put_u32(out + n + 1, 4);
		n += PROTO_HEADER_LEN;
		/* A Close the backend did not skip: the statement is gone for good. */
		prepared_free(r->closed);
		reply_pop(t);
	}
	return n;
}

/* Queue what the backend will answer to a message just sent. */
static void reply_expect(struct reply_tracker *t, enum reply_kind kind, const char *name, struct iobuf *to_server)
{
	/* After an error the backend discards everything up to Sync: nothing comes back, nothing is owed. */
	if (t->skipping_until_sync) {
		if (kind != REPLY_SYNC)
			return;
		t->skipping_until_sync = false;
	}
	reply_push(t, kind, name, to_server);
}

/* Is there a Sync behind the i-th entry: does its batch await its answer, with later batches behind it? */
static bool reply_sync_behind(const struct reply_tracker *t, uint32_t i)
{
	while (++i < t->count)
		if (reply_at(t, i)->kind == REPLY_SYNC)
			return true;
	return false;
}

/*
 * Is a Parse or Close of the client's statement client_name still unanswered
 * in an earlier batch (a Sync follows it in the queue)? The backend skips it
 * if that batch fails, so whether the statement exists is not known yet.
 * With owed_only, of the Parses only one pgmux answered itself counts (the
 * backend had the statement already, so a message using it would work
 * regardless).
 */
static bool parse_unsettled(const struct reply_tracker *t, const char *client_name, bool owed_only)
{
	for (uint32_t i = 0; i < t->count; i++) {
		const struct pending_reply *r = reply_at(t, i);

		if ((r->kind == REPLY_OWED_PARSE || r->kind == REPLY_OWED_CLOSE || (r->kind == REPLY_PARSE && !owed_only)) &&
		    strcmp(r->client_name, client_name) == 0)
			return reply_sync_behind(t, i);
	}
	return false;
}

/*
 * Does the backend's copy of statement server_name hang on an earlier batch
 * still unanswered (a Parse or Close of it, with a Sync after it in the
 * queue)? The backend skips them if that batch fails, so whether it has the
 * statement is not known yet: a message that relies on it (or prepares it)
 * must wait. A Parse by the client's own name client_name (may be NULL)
 * does not count: were it skipped, the statement would not exist for the
 * client either, and the backend's "does not exist" is the right answer.
 */
static bool statement_unsettled(const struct reply_tracker *t, const char *server_name, const char *client_name)
{
	for (uint32_t i = 0; i < t->count; i++) {
		const struct pending_reply *r = reply_at(t, i);

		if ((r->kind == REPLY_OWN_PARSE || r->kind == REPLY_OWN_CLOSE ||
		     (r->kind == REPLY_PARSE && (client_name == NULL || strcmp(r->client_name, client_name) != 0))) &&
		    strcmp(r->name, server_name) == 0)
			return reply_sync_behind(t, i);
	}
	return false;
}

/* Does the backend still owe a ReadyForQuery (the transaction state it will be in is not known yet)? */
static bool batch_pending(const struct reply_tracker *t)
{
	for (uint32_t i = 0; i < t->count; i++) {
		enum reply_kind kind = reply_at(t, i)->kind;

		if (kind == REPLY_SYNC || kind == REPLY_QUERY || kind == REPLY_FUNCTION_CALL)
			return true;
	}
	return false;
}

/* ------------------------------------------------------------ frontend */

bool reply_count_frontend(struct reply_tracker *t, uint8_t type)
{
	switch (type) {
	case FE_QUERY:
	case FE_FUNCTION_CALL:
		/*
		 * After an error in an extended-protocol batch the backend skips
		 * everything up to the next Sync, a Query too: it gets no
		 * ReadyForQuery. With tracking the tracker knows when.
		 */
		if (t->tracking && t->skipping_until_sync)
			return false;
		t->outstanding++;
		if (type == FE_FUNCTION_CALL)
			return false;
		t->unsynced = false;
		return true;
	case FE_SYNC:
		t->outstanding++;
		t->unsynced = false;
		return true;
	case FE_PARSE:
	case FE_BIND:
	case FE_EXECUTE:
	case FE_DESCRIBE:
	case FE_CLOSE:
		t->unsynced = true;
		return false;
	default:
		/* Flush and the COPY sub-protocol leave the transaction state alone. */
		return false;
	}
}

static const char *stmt_key(const char *name, char key[REPLY_STMT_KEY_LEN + 1])
{
	size_t n = strnlen(name, REPLY_STMT_KEY_LEN);

	memcpy(key, name, n);
	key[n] = '\0';
	return key;
}

static unsigned session_scan(struct reply_session *rs, const char *sql, size_t len)
{
	return rs->hooks && rs->hooks->scan ? rs->hooks->scan(rs->hook_arg, sql, len) : 0;
}

/* Keep the backend within max_backend_statements by closing the least recently used. */
static void make_room(struct reply_tracker *t, const struct reply_limits *limits, struct iobuf *to_server)
{
	while (t->statements->count > 0 && t->statements->count >= (size_t)limits->max_backend_statements) {
		struct strmap_entry *victim = strmap_oldest(t->statements);

		prepared_put_close(to_server, victim->key);
		reply_expect(t, REPLY_OWN_CLOSE, victim->key, to_server);
		strmap_delete(t->statements, victim);
	}
}

/* Make sure the backend has statement st before a message uses it (send its Parse if needed). */
static void ensure_prepared(struct reply_tracker *t, const struct prepared_stmt *st, const struct reply_limits *limits,
			    struct iobuf *to_server)
{
	struct strmap_entry *e;

	if (t->skipping_until_sync)
		return;
	e = strmap_find(t->statements, st->server_name);
	if (e) {
		strmap_touch(t->statements, e);
		return;
	}
	make_room(t, limits, to_server);
	iobuf_append(to_server, st->parse, st->parse_len);
	reply_expect(t, REPLY_OWN_PARSE, st->server_name, to_server);
	strmap_insert(t->statements, st->server_name, NULL);
}

/*
 * The client's Close of its statement client_name: answered by pgmux, in
 * order, leaving the backend's statement for others. The client's name goes
 * at once, but the statement comes back if the backend skips the Close
 * (after an error earlier in its batch), as PostgreSQL keeps it then.
 */
static void close_owed(struct reply_tracker *t, const char *client_name, struct iobuf *to_server)
{
	struct reply_session *rs = t->session;
	struct strmap_entry *e;

	/* After an error the backend skips it: no answer, and the client keeps its statement. */
	if (t->skipping_until_sync)
		return;
	if (!reply_push(t, REPLY_OWED_CLOSE, NULL, to_server))
		return;
	if (rs && (e = strmap_find(reply_stmts(rs), client_name)) != NULL) {
		snprintf(reply_back(t)->client_name, sizeof(reply_back(t)->client_name), "%s", client_name);
		reply_back(t)->closed = strmap_delete(&rs->names->stmts, e);
	}
}

/*
 * Close the unnamed statement, which an earlier client of the backend may
 * have left there (the protocol keeps it until the next Parse of it or
 * Query): before a client that has not Parsed it on this backend in this
 * transaction uses it. Should the backend skip that Close, the session's
 * unnamed_here goes back to false.
 */
static void unnamed_reset(struct reply_tracker *t, struct iobuf *to_server)
{
	size_t begin;

	if (t->skipping_until_sync)
		return;
	begin = proto_begin(to_server, FE_CLOSE);
	iobuf_append_u8(to_server, 'S');
	iobuf_append_u8(to_server, 0);
	proto_end(to_server, begin);
	reply_expect(t, REPLY_OWN_UNNAMED_CLOSE, NULL, to_server);
}

/*
 * The client is about to Bind, Describe or Close the unnamed statement.
 * PostgreSQL keeps the unnamed statement until the next Parse of it (or a
 * Query), so a backend may hold one that its last client left: a Bind of it
 * with no Parse before it would run that client's text. The first time in a
 * transaction that a client uses it, pgmux puts the client's own there
 * first: the Parse it last sent for it (unnamed_parsed()), or, if it has
 * none, a Close of it, after which a Bind fails with 26000 as on a session
 * of the client's own. Should the backend skip what pgmux sent (an error
 * earlier in the batch), unnamed_here goes back to false.
 */
static void use_unnamed(struct reply_tracker *t, struct reply_session *rs, struct iobuf *to_server)
{
	if (rs->unnamed_here || t->skipping_until_sync)
		return;
	if (rs->unnamed_parse_len > 0) {
		iobuf_append(to_server, rs->unnamed_parse, rs->unnamed_parse_len);
		reply_expect(t, REPLY_OWN_PARSE, NULL, to_server);
	} else {
		unnamed_reset(t, to_server);
	}
	rs->unnamed_here = true;
}

/* The client Parses the unnamed statement (msg, len bytes): it is the client's from now on. */
static void unnamed_parsed(struct reply_tracker *t, struct reply_session *rs, const uint8_t *msg, size_t len)
{
	if (len > UINT32_MAX)
		len = 0; /* cannot be: a message is at most max_packet_size (as if out of memory) */
	if (len > rs->unnamed_parse_cap) {
		uint8_t *copy = malloc(len);

		/* Out of memory: it has none, and a later use closes what another client left instead. */
		free(rs->unnamed_parse);
		rs->unnamed_parse = copy;
		rs->unnamed_parse_cap = copy ? (uint32_t)len : 0;
	}
	rs->unnamed_parse_len = rs->unnamed_parse ? (uint32_t)len : 0;
	if (rs->unnamed_parse)
		memcpy(rs->unnamed_parse, msg, len);
	if (!t->skipping_until_sync)
		rs->unnamed_here = true;
}

/*
 * The client's Parse of st under a name it has already given to statement
 * taken: let the backend refuse it (42P05, or what is wrong with the text).
 * PostgreSQL finds a name taken only once the new text has passed every
 * other check (parse, analysis, an aborted transaction), and its error fails
 * a transaction block. So the backend is made to refuse it: the new text
 * goes under the server-side name of the statement that has the client's
 * name, which the backend has (made sure of first), and its error, whichever
 * it is, is the client's.
 */
static void parse_taken(struct reply_tracker *t, const struct prepared_stmt *taken, const struct prepared_stmt *st,
			const struct reply_limits *limits, struct iobuf *to_server)
{
	ensure_prepared(t, taken, limits, to_server);
	prepared_put_parse_as(to_server, st, taken->server_name);
	reply_expect(t, REPLY_PARSE_REFUSED, NULL, to_server);
}

/*
 * A client's Parse of st (named client_name) goes to the backend, or is
 * answered from the backend's statements. If the backend rejects it, the
 * client's name is dropped again, as PostgreSQL would never have created it.
 * transaction_control: the text begins or ends transactions. Returns true
 * when pgmux answers it.
 */
static bool parse(struct reply_tracker *t, const struct prepared_stmt *st, const char *client_name,
		  bool transaction_control, char tx_status, const struct reply_limits *limits, struct iobuf *to_server)
{
	struct strmap_entry *e = strmap_find(t->statements, st->server_name);
	bool answered = e != NULL;

	if (e && (tx_status != 'I' || batch_pending(t))) {
		/*
		 * In a failed transaction block PostgreSQL refuses a Parse (25P02)
		 * unless the statement ends the transaction, and the backend may
		 * be in one. Before pgmux answers the Parse itself, the backend
		 * judges one of pgmux's own, closed again at once: of the client's
		 * text if it controls transactions, else of a SELECT, refused
		 * exactly when the client's would be (the text itself is known to
		 * be good: the backend has it). Its error is the client's.
		 */
		prepared_put_check(to_server, transaction_control ? st : NULL);
		reply_expect(t, REPLY_OWN_PARSE, NULL, to_server);
		prepared_put_close(to_server, PREPARED_CHECK_NAME);
		reply_expect(t, REPLY_OWN_CLOSE, NULL, to_server);
	}
	if (e) {
		/* The backend has it already: answer the client's Parse ourselves, in order. */
		strmap_touch(t->statements, e);
		reply_expect(t, REPLY_OWED_PARSE, st->server_name, to_server);
	} else {
		make_room(t, limits, to_server);
		iobuf_append(to_server, st->parse, st->parse_len);
		reply_expect(t, REPLY_PARSE, st->server_name, to_server);
		strmap_insert(t->statements, st->server_name, NULL);
	}
	/* Whose Parse it is, unless already answered: should the backend skip it, the client's name goes. */
	if (t->count > 0 && (reply_back(t)->kind == REPLY_PARSE || reply_back(t)->kind == REPLY_OWED_PARSE))
		snprintf(reply_back(t)->client_name, sizeof(reply_back(t)->client_name), "%s", client_name);
	return answered;
}

/* What a client's message of this type expects back when it goes as it is. */
static enum reply_kind kind_of(uint8_t type)
{
	switch (type) {
	case FE_PARSE:
		return REPLY_PARSE;
	case FE_BIND:
		return REPLY_BIND;
	case FE_DESCRIBE:
		return REPLY_DESCRIBE;
	case FE_EXECUTE:
		return REPLY_EXECUTE;
	case FE_CLOSE:
		return REPLY_CLOSE;
	case FE_SYNC:
		return REPLY_SYNC;
	case FE_QUERY:
		return REPLY_QUERY;
	case FE_FUNCTION_CALL:
		return REPLY_FUNCTION_CALL;
	default:
		/* A Flush with a body: the backend refuses it. */
		return REPLY_FLUSH_REFUSED;
	}
}

/*
 * One whole message. Named statements are rewritten to their server-side
 * names and prepared on this backend when it lacks them, and every reply is
 * queued. Returns REPLY_WAIT, having done nothing, when what the message
 * must do hangs on an earlier batch not answered yet, which the backend
 * skips the rest of if it fails: whether the client's statement exists
 * (parse_unsettled()), or the backend's copy of it (statement_unsettled()).
 */
enum reply_action reply_frontend(struct reply_tracker *t, const uint8_t *msg, size_t len, char tx_status,
				 const struct reply_limits *limits, struct iobuf *to_server)
{
	struct reply_session *rs = t->session;
	uint8_t type = msg[0];
	const uint8_t *body = msg + PROTO_HEADER_LEN;
	size_t blen = len - PROTO_HEADER_LEN;
	struct msg_reader r;
	const char *name;
	struct strmap_entry *e;
	struct prepared_stmt *st;
	char key[REPLY_STMT_KEY_LEN + 1];

	/* After an error the backend ignores everything up to Sync: pass it on untouched. */
	if (t->skipping_until_sync && type != FE_SYNC)
		return REPLY_FORWARD;
	msg_reader_init(&r, body, blen);
	switch (type) {
	case FE_QUERY:
		/*
		 * Only a text PostgreSQL will run: one string and its NUL, nothing
		 * after. A malformed Query is refused without running anything, and
		 * must not pin the session on what a scan of its bytes guesses.
		 */
		if (blen > 0 && memchr(body, '\0', blen) == body + blen - 1)
			session_scan(rs, (const char *)body, blen - 1);
		/* A Query destroys the unnamed statement: none is left for the client, as directly. */
		free(rs->unnamed_parse);
		rs->unnamed_parse = NULL;
		rs->unnamed_parse_len = rs->unnamed_parse_cap = 0;
		rs->unnamed_here = true;
		break;
	case FE_PARSE: {
		const char *client_name;
		struct prepared_stmt *taken = NULL;
		unsigned effects = 0;

		name = msg_read_str(&r);
		const char *query = msg_read_str(&r);

		/* Is the name taken? Not if that Parse is skipped. */
		if (name && name[0] && parse_unsettled(t, stmt_key(name, key), false))
			return REPLY_WAIT;
		st = name && name[0] ? prepared_from_parse(body, blen, &client_name) : NULL;
		if (name && name[0] && st == NULL && errno == ENOMEM)
			return REPLY_NO_MEMORY;
		if (st && (e = strmap_find(reply_stmts(rs), key)) != NULL)
			taken = e->value;
		/* Has the backend the statement (the one that has the name, if taken) already? */
		if (st && statement_unsettled(t, taken ? taken->server_name : st->server_name, key)) {
			prepared_free(st);
			return REPLY_WAIT;
		}
		if (name && query)
			effects = session_scan(rs, query, strlen(query));
		if (name && name[0] == '\0')
			unnamed_parsed(t, rs, msg, len);
		if (st == NULL)
			break; /* unnamed (or malformed: the backend says why) */
		if (taken) {
			/* The backend refuses it, as PostgreSQL would (see parse_taken()). */
			parse_taken(t, taken, st, limits, to_server);
			prepared_free(st);
			return REPLY_REWRITTEN;
		}
		/*
		 * pgmux keeps each statement's text for as long as the client
		 * holds it, so their number is bounded per client.
		 */
		if (reply_stmts(rs)->count >= (size_t)limits->max_client_statements) {
			prepared_free(st);
			return REPLY_TOO_MANY;
		}
		st->sets_session = (effects & REPLY_SETTINGS_EFFECTS) != 0;
		st->writes = (effects & SQL_EFFECT_WRITE) != 0;
		strmap_insert(&reply_names_make(rs)->stmts, key, st);
		reply_note_stmt_name(rs, st, key);
		return parse(t, st, key, (effects & SQL_EFFECT_TRANSACTION_CONTROL) != 0, tx_status, limits, to_server)
			       ? REPLY_ANSWERED
			       : REPLY_REWRITTEN;
	}
	case FE_BIND:
		if (msg_read_str(&r) == NULL || (name = msg_read_str(&r)) == NULL)
			break; /* malformed: the backend answers as it would directly */
		if (name[0] == '\0') {
			use_unnamed(t, rs, to_server);
			break;
		}
		/*
		 * A Parse that pgmux answered itself (the backend had the
		 * statement) must not make this Bind work if it is skipped.
		 */
		if (parse_unsettled(t, stmt_key(name, key), true))
			return REPLY_WAIT;
		if ((e = strmap_find(reply_stmts(rs), key)) == NULL)
			break; /* unknown: the backend answers as it would directly */
		st = e->value;
		if (statement_unsettled(t, st->server_name, key))
			return REPLY_WAIT;
		if (rs->hooks && rs->hooks->bound)
			rs->hooks->bound(rs->hook_arg, st);
		ensure_prepared(t, st, limits, to_server);
		prepared_rewrite(to_server, FE_BIND, body, blen, (size_t)((const uint8_t *)name - body), strlen(name),
				 st->server_name);
		reply_expect(t, REPLY_BIND, NULL, to_server);
		return REPLY_REWRITTEN;
	case FE_DESCRIBE:
	case FE_CLOSE: {
		uint8_t kind;

		/* Bytes after the name make the message malformed: the backend refuses it, as it would directly. */
		if (msg_read_u8(&r, &kind) != 0 || kind != 'S' || (name = msg_read_str(&r)) == NULL || r.pos != blen)
			break;
		if (name[0] == '\0') {
			use_unnamed(t, rs, to_server);
			break;
		}
		e = strmap_find(reply_stmts(rs), stmt_key(name, key));
		if (type == FE_CLOSE) {
			/* Answered by pgmux: the backend's statement stays for others. */
			close_owed(t, key, to_server);
			return REPLY_ANSWERED;
		}
		/* As for a Bind. */
		if (parse_unsettled(t, key, true) ||
		    (e && statement_unsettled(t, ((struct prepared_stmt *)e->value)->server_name, key)))
			return REPLY_WAIT;
		if (e == NULL)
			break;
		st = e->value;
		ensure_prepared(t, st, limits, to_server);
		prepared_rewrite(to_server, FE_DESCRIBE, body, blen, 1, strlen(name), st->server_name);
		reply_expect(t, REPLY_DESCRIBE, NULL, to_server);
		return REPLY_REWRITTEN;
	}
	default:
		break;
	}
	reply_expect(t, kind_of(type), NULL, to_server);
	return REPLY_FORWARD;
}

/* ------------------------------------------------------------ backend */

static bool backend_statement_entry(const struct pending_reply *r);

/* The backend ran a statement that dropped session state; follow it. Returns true when it reset parameters. */
/* Is a Parse of the client's statement client_name still in the queue (sent after what is answered)? */
static bool client_parse_pending(const struct reply_tracker *t, const char *client_name)
{
	for (uint32_t i = 0; i < t->count; i++) {
		const struct pending_reply *r = reply_at(t, i);

		if ((r->kind == REPLY_PARSE || r->kind == REPLY_OWED_PARSE) && strcmp(r->client_name, client_name) == 0)
			return true;
	}
	return false;
}

/*
 * The statement the head of the queue answers for (a DISCARD ALL or
 * DEALLOCATE ALL) dropped every prepared statement, the backend's and the
 * client's, before the backend went on with what the queue holds after it:
 * the backend has what those messages prepare (and did not evict again; an
 * eviction of a statement that was gone closes nothing), the client what
 * it Parsed since.
 */
static void statements_dropped(struct reply_tracker *t, struct reply_session *rs)
{
	struct list_node *pos, *tmp;

	strmap_clear(t->statements, NULL);
	for (uint32_t i = 0; i < t->count; i++) {
		struct pending_reply *r = reply_at(t, i);
		struct strmap_entry *e;

		if (!backend_statement_entry(r))
			continue;
		e = strmap_find(t->statements, r->name);
		if (r->kind != REPLY_OWN_CLOSE && e == NULL)
			strmap_insert(t->statements, r->name, NULL);
		else if (r->kind == REPLY_OWN_CLOSE && e != NULL)
			strmap_delete(t->statements, e);
		else if (r->kind == REPLY_OWN_CLOSE)
			r->name[0] = '\0'; /* it closes nothing now (see skipped_to_sync()) */
	}
	if (rs == NULL)
		return;
	list_for_each_safe(pos, tmp, &reply_stmts(rs)->lru) {
		struct strmap_entry *e = list_entry(pos, struct strmap_entry, lru);

		if (!client_parse_pending(t, e->key))
			prepared_free(strmap_delete(&rs->names->stmts, e));
	}
}

static bool command_complete(struct reply_tracker *t, const uint8_t *body, size_t len)
{
	struct reply_session *rs = t->session;
	const char *tag = (const char *)body;

	if (len == 0 || body[len - 1] != '\0')
		return false;
	if (strcmp(tag, "DISCARD ALL") == 0 || strcmp(tag, "DEALLOCATE ALL") == 0)
		statements_dropped(t, rs);
	/* Back to the server's defaults (init_query's settings too). */
	return strcmp(tag, "DISCARD ALL") == 0 || (strcmp(tag, "RESET") == 0 && rs && rs->reset_all_pending);
}

/*
 * The backend failed the message at the head of the queue and skips the
 * rest up to the next Sync: undo what pgmux assumed when it sent them, and
 * drop their entries (and the replies owed for them, which the backend
 * would not have sent either).
 */
/* Does this entry prepare or close one of the backend's statements? */
static bool backend_statement_entry(const struct pending_reply *r)
{
	return r->name[0] && (r->kind == REPLY_PARSE || r->kind == REPLY_OWN_PARSE || r->kind == REPLY_OWN_CLOSE);
}

/*
 * The backend skipped the first n entries of the queue (a failed batch):
 * each statement they prepared or closed is as it was before them, and then
 * as the later batches, which the backend does run, leave it: evicted (a
 * Close of pgmux's own), or prepared again (the client's own statement,
 * which a later message may prepare without waiting: see
 * statement_unsettled()).
 */
static void statements_skipped(struct reply_tracker *t, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		const struct pending_reply *r = reply_at(t, i);
		struct strmap_entry *e;
		bool first = true, has;

		if (!backend_statement_entry(r))
			continue;
		/* The batch's first entry on it says what was there before: a Close, or a Parse of a new one. */
		for (uint32_t j = 0; j < i && first; j++)
			if (backend_statement_entry(reply_at(t, j)) && strcmp(reply_at(t, j)->name, r->name) == 0)
				first = false;
		if (!first)
			continue;
		has = r->kind == REPLY_OWN_CLOSE;
		for (uint32_t j = n; j < t->count; j++) {
			struct pending_reply *later = reply_at(t, j);

			if (!backend_statement_entry(later) || strcmp(later->name, r->name) != 0)
				continue;
			/*
			 * A later Close of a statement that is not there closes
			 * nothing: should its batch fail too, undoing it must not
			 * bring the statement back.
			 */
			if (later->kind == REPLY_OWN_CLOSE && !has)
				later->name[0] = '\0';
			has = later->kind != REPLY_OWN_CLOSE;
		}
		e = strmap_find(t->statements, r->name);
		if (has && e == NULL)
			strmap_insert(t->statements, r->name, NULL);
		else if (!has && e != NULL)
			strmap_delete(t->statements, e);
	}
}

static void skipped_to_sync(struct reply_tracker *t)
{
	struct reply_session *rs = t->session;
	struct pending_reply *r;
	uint32_t n = 0;

	while (n < t->count && reply_at(t, n)->kind != REPLY_SYNC)
		n++;
	statements_skipped(t, n);
	/*
	 * The client's statements are as they were before the first of them:
	 * undone from the last back, a statement prepared and then closed in
	 * the same batch (or the other way round) ends where it was.
	 */
	for (uint32_t i = n; i-- > 0;) {
		struct strmap_entry *e;
		bool is_parse;

		r = reply_at(t, i);
		is_parse = r->kind == REPLY_PARSE || r->kind == REPLY_OWN_PARSE;
		/*
		 * A statement the backend never created does not exist for the
		 * client either (nor, if a later batch closed it already, may
		 * undoing that Close bring it back)...
		 */
		if ((r->kind == REPLY_PARSE || r->kind == REPLY_OWED_PARSE) && r->client_name[0] && rs &&
		    (e = strmap_find(reply_stmts(rs), r->client_name)) != NULL &&
		    strcmp(((struct prepared_stmt *)e->value)->server_name, r->name) == 0) {
			prepared_free(strmap_delete(&rs->names->stmts, e));
		} else if ((r->kind == REPLY_PARSE || r->kind == REPLY_OWED_PARSE) && r->client_name[0]) {
			for (uint32_t j = n; j < t->count; j++) {
				struct pending_reply *later = reply_at(t, j);

				if (later->closed && strcmp(later->client_name, r->client_name) == 0 &&
				    strcmp(later->closed->server_name, r->name) == 0) {
					prepared_free(later->closed);
					later->closed = NULL;
					break;
				}
			}
		}
		/*
		 * What was to make the unnamed statement the client's was skipped
		 * (pgmux's Close or Parse of it, or the client's Parse): the
		 * backend may still have another client's.
		 */
		if ((r->kind == REPLY_OWN_UNNAMED_CLOSE || (is_parse && r->name[0] == '\0')) && rs)
			rs->unnamed_here = false;
		/* ...and one it never closed is the client's again. */
		if (r->closed && rs && strmap_find(reply_stmts(rs), r->client_name) == NULL)
			strmap_insert(&reply_names_make(rs)->stmts, r->client_name, r->closed);
		else
			prepared_free(r->closed);
		r->closed = NULL;
	}
	while (n-- > 0) {
		r = reply_front(t);
		/* A Query skipped this way gets no ReadyForQuery. */
		if ((r->kind == REPLY_QUERY || r->kind == REPLY_FUNCTION_CALL) && t->outstanding > 0)
			t->outstanding--;
		reply_pop(t);
	}
	if (t->count == 0)
		t->skipping_until_sync = true;
}

/* Match a reply with the queue. Returns false when it is to be swallowed (the reply to pgmux's own). */
static bool reply_arrived(struct reply_tracker *t, uint8_t type, struct reply_verdict *out)
{
	struct pending_reply *r = reply_front(t);
	bool forward = true;

	if (type == BE_NOTICE_RESPONSE || type == BE_NOTIFICATION || type == BE_PARAMETER_STATUS)
		return true;
	if (type == BE_ERROR_RESPONSE) {
		if (r && (r->kind == REPLY_QUERY || r->kind == REPLY_FUNCTION_CALL || r->kind == REPLY_SYNC))
			return true; /* ReadyForQuery follows and ends it */
		/*
		 * An extended-protocol message failed (with nothing pending, a
		 * Flush with a body, which has no reply to wait for): the backend
		 * skips everything up to the next Sync. A text the backend refused
		 * is no longer one pgmux may accept without asking.
		 */
		if (r && (r->kind == REPLY_PARSE || r->kind == REPLY_OWN_PARSE) && r->name[0]) {
			out->statement = REPLY_STATEMENT_REFUSED;
			memcpy(out->statement_name, r->name, sizeof(out->statement_name));
		}
		skipped_to_sync(t);
		return true;
	}
	if (r == NULL)
		return true;
	switch (r->kind) {
	case REPLY_PARSE:
	case REPLY_OWN_PARSE:
		if (type == BE_PARSE_COMPLETE) {
			forward = r->kind == REPLY_PARSE;
			if (r->name[0]) {
				out->statement = REPLY_STATEMENT_ACCEPTED;
				memcpy(out->statement_name, r->name, sizeof(out->statement_name));
			}
			reply_pop(t);
		}
		break;
	case REPLY_BIND:
		if (type == BE_BIND_COMPLETE)
			reply_pop(t);
		break;
	case REPLY_DESCRIBE:
		if (type == BE_ROW_DESCRIPTION || type == BE_NO_DATA)
			reply_pop(t);
		break;
	case REPLY_EXECUTE:
		if (type == BE_COMMAND_COMPLETE || type == BE_PORTAL_SUSPENDED || type == BE_EMPTY_QUERY)
			reply_pop(t);
		break;
	case REPLY_CLOSE:
	case REPLY_OWN_CLOSE:
	case REPLY_OWN_UNNAMED_CLOSE:
		if (type == BE_CLOSE_COMPLETE) {
			forward = r->kind == REPLY_CLOSE;
			reply_pop(t);
		}
		break;
	case REPLY_SYNC:
	case REPLY_QUERY:
	case REPLY_FUNCTION_CALL:
		if (type == BE_READY_FOR_QUERY)
			reply_pop(t);
		break;
	case REPLY_FLUSH_REFUSED:
	case REPLY_PARSE_REFUSED:
		/*
		 * The backend took what it had to refuse: a Parse under the name of
		 * a statement it no longer has (a DEALLOCATE ALL ran ahead of it,
		 * in the same batch), now holding the client's new text under that
		 * statement's name. Nothing it sends from now on can be matched,
		 * and no other client may use it.
		 */
		out->broken = true;
		forward = false;
		break;
	default:
		break;
	}
	return forward;
}

/* Is every entry left one that pgmux owes the client (sent right after this message)? */
static bool only_owed_left(const struct reply_tracker *t)
{
	for (uint32_t i = 0; i < t->count; i++) {
		enum reply_kind kind = reply_at(t, i)->kind;

		if (kind != REPLY_OWED_PARSE && kind != REPLY_OWED_CLOSE)
			return false;
	}
	return true;
}

void reply_backend(struct reply_tracker *t, uint8_t type, const uint8_t *body, size_t len, struct reply_verdict *out)
{
	out->forward = true;
	out->owed = false;
	out->release = false;
	out->session_reset = false;
	out->broken = false;
	out->statement = REPLY_STATEMENT_NONE;
	if (type == BE_READY_FOR_QUERY && t->outstanding > 0)
		t->outstanding--;
	if (!t->tracking)
		return;
	if (type == BE_COMMAND_COMPLETE)
		out->session_reset = command_complete(t, body, len);
	out->forward = reply_arrived(t, type, out);
	out->owed = reply_owed_due(t);
	if (type == BE_READY_FOR_QUERY)
		out->release = len >= 1 && body[0] == 'I' && t->outstanding == 0 && !t->unsynced &&
			       !t->skipping_until_sync && only_owed_left(t);
}

bool reply_translate_error(const struct reply_session *rs, const uint8_t *body, size_t len, struct iobuf *out)
{
	const char *hit = memmem(body, len, "pgmux_", 6);
	size_t begin;
	const uint8_t *p = body, *end = body + len;

	if (hit == NULL || rs == NULL || reply_stmt_names(rs)->count == 0)
		return false;
	begin = proto_begin(out, BE_ERROR_RESPONSE);
	while (p < end && *p) {
		const char *field = (const char *)p + 1;
		size_t flen = strnlen(field, (size_t)(end - p - 1));
		const char *at;

		iobuf_append_u8(out, *p);
		/* Copy the field, replacing each internal name that this client knows. */
		while (flen > 0 && (at = memmem(field, flen, "pgmux_", 6)) != NULL &&
		       (size_t)(at - field) + PREPARED_NAME_LEN - 1 <= flen) {
			char internal[PREPARED_NAME_LEN];
			struct strmap_entry *e;

			memcpy(internal, at, PREPARED_NAME_LEN - 1);
			internal[PREPARED_NAME_LEN - 1] = '\0';
			e = strmap_find(reply_stmt_names(rs), internal);
			iobuf_append(out, field, (size_t)(at - field));
			if (e)
				iobuf_append(out, e->value, strlen(e->value));
			else
				iobuf_append(out, internal, PREPARED_NAME_LEN - 1);
			flen -= (size_t)(at - field) + PREPARED_NAME_LEN - 1;
			field = at + PREPARED_NAME_LEN - 1;
		}
		iobuf_append(out, field, flen);
		iobuf_append_u8(out, 0);
		p = (const uint8_t *)field + flen + 1;
	}
	iobuf_append_u8(out, 0);
	proto_end(out, begin);
	return true;
}

/* ------------------------------------------------------------ no backend */

/*
 * Does the batch that begins with the client's next message hold only what
 * pgmux answers alone (Parse, Close, Flush) up to its Sync? A Parse answered
 * here in a batch that goes on to a Bind would only move the backend's
 * verdict on its text from the Parse to the Bind. REPLY_IDLE_NEED_MORE when
 * the batch is not all here and no Flush asked for answers yet (PostgreSQL
 * would not answer before either); REPLY_IDLE_ANSWERED when it may be
 * answered here.
 */
static enum reply_idle batch_answerable(const uint8_t *p, size_t avail, const struct reply_limits *limits)
{
	size_t off = 0;
	uint8_t last = 0;

	while (avail - off >= PROTO_HEADER_LEN) {
		uint8_t type = p[off];
		uint32_t len = get_u32(p + off + 1);

		if (len < 4 || len - 4 > (uint32_t)limits->max_packet_size ||
		    (type != FE_PARSE && type != FE_CLOSE && type != FE_FLUSH && type != FE_SYNC))
			return REPLY_IDLE_BORROW;
		if (type == FE_SYNC)
			return REPLY_IDLE_ANSWERED;
		if (avail - off < 1 + (size_t)len)
			return REPLY_IDLE_NEED_MORE;
		last = type;
		off += 1 + (size_t)len;
	}
	return last == FE_FLUSH ? REPLY_IDLE_BORROW : REPLY_IDLE_NEED_MORE;
}

/*
 * Outside a transaction, with no backend, a Sync only says ReadyForQuery
 * 'I'; a Close of a statement drops the client's statement (the backends'
 * copies stay for others, as with a Close in a transaction); a Close of a
 * portal closes nothing (none outlives its transaction); and a Parse of a
 * named statement creates only the client's statement, as a backend
 * prepares it when a message first uses it (ensure_prepared()). This
 * matters beyond saving a borrow: libpq's PQprepare() waits for its Parse
 * and Sync, and a program that drives several connections from one thread
 * (pgbench -M prepared) would wait there, for a backend, while its other
 * connections hold every backend inside their transactions, which only it
 * can end.
 *
 * A Parse is the backend's to judge, though: pgmux answers it alone when a
 * backend of the pool accepted the same text and parameter types before
 * (the known hook), or, with unjudged set, when no backend could take it
 * without waiting for another client's transaction to end. A text the
 * backend then refuses fails the first message that uses it, with the
 * backend's error (and the pool forgets that the text was good, so the next
 * Parse of it is judged again).
 */
enum reply_idle reply_answer_idle(struct reply_session *rs, const uint8_t *in, size_t avail, bool unjudged,
				  const struct reply_limits *limits, struct iobuf *to_client,
				  struct reply_idle_result *out)
{
	uint8_t type = in[0];
	uint32_t mlen = get_u32(in + 1);
	const uint8_t *body = in + PROTO_HEADER_LEN;
	size_t blen = mlen - 4;
	char key[REPLY_STMT_KEY_LEN + 1];
	struct msg_reader r;
	struct strmap_entry *e;

	out->consumed = 0;
	out->parse_answered = false;
	out->discard_batch = false;
	if (type != FE_SYNC && type != FE_PARSE && type != FE_CLOSE)
		return REPLY_IDLE_BORROW;
	if (avail < 1 + (size_t)mlen)
		return REPLY_IDLE_NEED_MORE;
	msg_reader_init(&r, body, blen);
	switch (type) {
	case FE_SYNC:
		if (blen != 0)
			return REPLY_IDLE_BORROW; /* malformed: the backend says why */
		proto_put_ready(to_client, 'I');
		break;
	case FE_CLOSE: {
		const char *name;
		uint8_t kind;

		if (msg_read_u8(&r, &kind) != 0 || (kind != 'S' && kind != 'P') || (name = msg_read_str(&r)) == NULL ||
		    r.pos != blen)
			return REPLY_IDLE_BORROW;
		if (kind == 'S' && (e = strmap_find(reply_stmts(rs), stmt_key(name, key))) != NULL)
			prepared_free(strmap_delete(&rs->names->stmts, e));
		iobuf_append_u8(to_client, BE_CLOSE_COMPLETE);
		iobuf_append_u32(to_client, 4);
		break;
	}
	case FE_PARSE: {
		struct sql_scan_result scan;
		struct prepared_stmt *st;
		const char *name = msg_read_str(&r), *query = msg_read_str(&r), *client_name;
		enum reply_idle batch;
		bool taken;

		/* The unnamed statement, a malformed message: as usual. */
		if (name == NULL || query == NULL || name[0] == '\0')
			return REPLY_IDLE_BORROW;
		if ((batch = batch_answerable(in, avail, limits)) != REPLY_IDLE_ANSWERED)
			return batch;
		taken = strmap_find(reply_stmts(rs), stmt_key(name, key)) != NULL;
		/* A text that pins the session pins it on a backend; one that defines code, likewise, to be seen. */
		sql_scan(query, strlen(query), params_carried_names, SQL_SCAN_CARRY_SETS, &scan);
		if (scan.pin != SQL_PIN_NONE || scan.custom_overflow || (scan.effects & SQL_EFFECT_DEFINES_CODE))
			return REPLY_IDLE_BORROW;
		if ((st = prepared_from_parse(body, blen, &client_name)) == NULL)
			return errno == ENOMEM ? REPLY_IDLE_NO_MEMORY : REPLY_IDLE_BORROW;
		if (!unjudged && !(rs->hooks && rs->hooks->known && rs->hooks->known(rs->hook_arg, st->server_name))) {
			prepared_free(st);
			return REPLY_IDLE_BORROW_OR_ANSWER;
		}
		if (taken) {
			/* PostgreSQL's answer once the text passed its checks; the rest of the batch is skipped. */
			char message[300];

			prepared_free(st);
			snprintf(message, sizeof(message), "prepared statement \"%.256s\" already exists", name);
			proto_put_error(to_client, "ERROR", SQLSTATE_DUPLICATE_PREPARED_STATEMENT, message, NULL, NULL);
			out->consumed = 1 + (size_t)mlen;
			out->discard_batch = true;
			return REPLY_IDLE_ANSWERED;
		}
		if (reply_stmts(rs)->count >= (size_t)limits->max_client_statements) {
			prepared_free(st);
			return REPLY_IDLE_TOO_MANY;
		}
		st->sets_session = (scan.effects & REPLY_SETTINGS_EFFECTS) != 0;
		st->writes = (scan.effects & SQL_EFFECT_WRITE) != 0;
		strmap_insert(&reply_names_make(rs)->stmts, key, st);
		reply_note_stmt_name(rs, st, key);
		iobuf_append_u8(to_client, BE_PARSE_COMPLETE);
		iobuf_append_u32(to_client, 4);
		out->parse_answered = true;
		break;
	}
	}
	out->consumed = 1 + (size_t)mlen;
	return REPLY_IDLE_ANSWERED;
}
