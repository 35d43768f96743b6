/*
 * secrets.c: the credential store behind secrets.h. A reload parses every
 * *.json file of the secrets directory into a fresh store, computes SCRAM
 * verifiers (reusing the old ones for unchanged passwords), then swaps the
 * store in under a mutex; lookups copy one entry out under the same mutex.
 * The store that lookups see is the directory's secrets merged with those
 * AWS Secrets Manager gave (secretsmgr.c hands them over whole), so either
 * source can change without touching the other's.
 */
#include "secrets.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "log.h"

/* A database secret is a few hundred bytes; anything this big is not one. */
#define SECRET_FILE_MAX (1024 * 1024)

/* An immutable, sorted-by-username array of secrets; replaced whole on reload. */
struct secret_store {
	struct secret *entries;
	size_t count;
};

/*
 * current_store is owned by this module. Readers (any thread) and the
 * reloader take store_mutex only to copy out or to swap the pointer, so a
 * lookup never waits for a reload's file reading or PBKDF2.
 * reload_mutex serializes reloads, so two of them never race to swap.
 */
static pthread_mutex_t store_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t reload_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct secret_store *current_store;
static int skipped_files; /* by the last reload; under reload_mutex, read with a relaxed load */
/* The two sources current_store is merged from; under reload_mutex, seen by no lookup. */
static struct secret_store *directory_layer;
static struct secret_store *managed_layer;

/* A copy of s, or NULL for NULL: an optional field stays absent. */
static char *duplicate_string(const char *s)
{
	return s != NULL ? xstrdup(s) : NULL;
}

void secret_clear(struct secret *s)
{
	if (s == NULL)
		return;
	if (s->password != NULL) {
		OPENSSL_cleanse(s->password, strlen(s->password));
		free(s->password);
	}
	free(s->username);
	free(s->dbname);
	free(s->host);
	OPENSSL_cleanse(&s->scram, sizeof(s->scram));
	memset(s, 0, sizeof(*s));
}

void secret_copy(struct secret *dst, const struct secret *src)
{
	dst->username = duplicate_string(src->username);
	dst->password = duplicate_string(src->password);
	dst->dbname = duplicate_string(src->dbname);
	dst->host = duplicate_string(src->host);
	dst->port = src->port;
	dst->scram = src->scram;
}

/* ----------------------------------------------------------- JSON parsing */

/*
 * Read an optional string member. A missing member or JSON null counts as
 * absent (*out stays NULL); any other non-string is an error.
 */
static int optional_string(json_t *root, const char *key, char **out, char *err, size_t errlen)
{
	json_t *value = json_object_get(root, key);

	*out = NULL;
	if (value == NULL || json_is_null(value))
		return 0;
	if (!json_is_string(value)) {
		error_printf(err, errlen, "\"%s\" must be a string", key);
		return -1;
	}
	*out = duplicate_string(json_string_value(value));
	return 0;
}

/* Accepts 5432 and "5432" (Secrets Manager consoles store either). */
static int parse_port(json_t *root, int *port, char *err, size_t errlen)
{
	json_t *value = json_object_get(root, "port");
	long long number;

	*port = 0;
	if (value == NULL || json_is_null(value))
		return 0;
	if (json_is_integer(value)) {
		number = json_integer_value(value);
	} else if (json_is_string(value)) {
		const char *text = json_string_value(value);
		char *end;

		/* Digits only: strtoll alone would take spaces, signs and "0x". */
		if (text[0] < '0' || text[0] > '9') {
			error_printf(err, errlen, "\"port\" must be a number between 1 and 65535");
			return -1;
		}
		errno = 0;
		number = strtoll(text, &end, 10);
		if (errno != 0 || *end != '\0') {
			error_printf(err, errlen, "\"port\" must be a number between 1 and 65535");
			return -1;
		}
	} else {
		error_printf(err, errlen, "\"port\" must be an integer or a numeric string");
		return -1;
	}
	if (number < 1 || number > 65535) {
		error_printf(err, errlen, "\"port\" must be a number between 1 and 65535");
		return -1;
	}
	*port = (int)number;
	return 0;
}

/*
 * Fill every field of out except the SCRAM verifier. jansson's own error text
 * quotes the input near the error, which may be the password, so only the
 * position is reported.
 */
int secret_parse_json(const char *json, size_t len, struct secret *out, char *err, size_t errlen)
{
	json_error_t json_error;
	json_t *root, *username, *password;
	char *engine = NULL;
	int rc = -1;

	memset(out, 0, sizeof(*out));
	if (json == NULL) {
		error_printf(err, errlen, "no JSON text");
		return -1;
	}
	root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &json_error);
	if (root == NULL) {
		error_printf(err, errlen, "invalid JSON (line %d, column %d)", json_error.line,
			  json_error.column);
		return -1;
	}
	if (!json_is_object(root)) {
		error_printf(err, errlen, "the JSON text is not an object");
		goto out;
	}

	username = json_object_get(root, "username");
	if (username == NULL || !json_is_string(username)) {
		error_printf(err, errlen, "\"username\" is missing or not a string");
		goto out;
	}
	if (json_string_value(username)[0] == '\0') {
		error_printf(err, errlen, "\"username\" is empty");
		goto out;
	}
	password = json_object_get(root, "password");
	if (password == NULL || !json_is_string(password)) {
		error_printf(err, errlen, "\"password\" is missing or not a string");
		goto out;
	}
	if (json_string_value(password)[0] == '\0') {
		error_printf(err, errlen, "\"password\" is empty");
		goto out;
	}

	/* Secrets Manager also holds secrets of MySQL and other engines; those are not for us. */
	if (optional_string(root, "engine", &engine, err, errlen) != 0)
		goto out;
	if (engine != NULL && strcmp(engine, "postgres") != 0 &&
	    strcmp(engine, "aurora-postgresql") != 0) {
		error_printf(err, errlen,
			  "\"engine\" is \"%.64s\", not \"postgres\" or \"aurora-postgresql\"",
			  engine);
		goto out;
	}

	out->username = duplicate_string(json_string_value(username));
	out->password = duplicate_string(json_string_value(password));
	if (optional_string(root, "host", &out->host, err, errlen) != 0 ||
	    optional_string(root, "dbname", &out->dbname, err, errlen) != 0 ||
	    parse_port(root, &out->port, err, errlen) != 0)
		goto out;
	/* Other members (arn, dbClusterIdentifier, ...) are Secrets Manager bookkeeping: ignored. */
	rc = 0;
out:
	free(engine);
	if (rc != 0)
		secret_clear(out);
	/* The decoded password lives in jansson's buffers too; it is freed here but not wiped. */
	json_decref(root);
	return rc;
}

int secret_compute_verifier(struct secret *s, char *err, size_t errlen)
{
	struct scram_verifier *v = &s->scram;

	auth_random_bytes(v->salt, sizeof(v->salt));
	v->iterations = SCRAM_DEFAULT_ITERATIONS;
	if (scram_compute_keys(s->password, v->salt, sizeof(v->salt), v->iterations, v->stored_key,
			       v->server_key) != 0) {
		error_printf(err, errlen, "computing the SCRAM verifier failed");
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------ store */

static int compare_secrets_by_username(const void *a, const void *b)
{
	const struct secret *left = a, *right = b;

	return strcmp(left->username, right->username);
}

static int compare_username_to_secret(const void *key, const void *element)
{
	const struct secret *entry = element;

	return strcmp(key, entry->username);
}

/* The caller holds store_mutex (or owns a store nobody else can see). */
static const struct secret *store_lookup_locked(const struct secret_store *store, const char *user)
{
	if (store == NULL || store->count == 0)
		return NULL;
	return bsearch(user, store->entries, store->count, sizeof(store->entries[0]),
		       compare_username_to_secret);
}

static void store_free(struct secret_store *store)
{
	if (store == NULL)
		return;
	for (size_t i = 0; i < store->count; i++)
		secret_clear(&store->entries[i]);
	free(store->entries);
	free(store);
}

bool secrets_find(const char *user, struct secret *out)
{
	const struct secret *found;

	memset(out, 0, sizeof(*out));
	if (user == NULL)
		return false;
	pthread_mutex_lock(&store_mutex);
	found = store_lookup_locked(current_store, user);
	if (found != NULL)
		secret_copy(out, found);
	pthread_mutex_unlock(&store_mutex);
	return found != NULL;
}

int secrets_skipped(void)
{
	return __atomic_load_n(&skipped_files, __ATOMIC_RELAXED);
}

int secrets_count(void)
{
	size_t count;

	pthread_mutex_lock(&store_mutex);
	count = current_store != NULL ? current_store->count : 0;
	pthread_mutex_unlock(&store_mutex);
	return count > INT_MAX ? INT_MAX : (int)count;
}

bool secrets_find_only(struct secret *out)
{
	bool found = false;

	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&store_mutex);
	if (current_store != NULL && current_store->count == 1) {
		secret_copy(out, &current_store->entries[0]);
		found = true;
	}
	pthread_mutex_unlock(&store_mutex);
	return found;
}

/*
 * Give s the verifier it had in the current store if its password did not
 * change, so a reload costs no PBKDF2 for unchanged users. Returns whether
 * the old verifier was reused.
 */
static bool reuse_previous_verifier(struct secret *s)
{
	const struct secret *previous;
	bool reused = false;

	pthread_mutex_lock(&store_mutex);
	previous = store_lookup_locked(current_store, s->username);
	if (previous != NULL && strcmp(previous->password, s->password) == 0) {
		s->scram = previous->scram;
		reused = true;
	}
	pthread_mutex_unlock(&store_mutex);
	return reused;
}

/*
 * Read a whole secret file. Symbolic links are followed on purpose:
 * Kubernetes mounts secrets as links into a hidden "..data" directory.
 * Returns a malloc'd buffer, or NULL with a reason in err.
 */
static char *read_secret_file(const char *path, size_t *len, char *err, size_t errlen)
{
	struct stat st;
	char *buffer = NULL;
	size_t used = 0;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		error_printf(err, errlen, "cannot open: %s", strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) != 0) {
		error_printf(err, errlen, "cannot stat: %s", strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		error_printf(err, errlen, "not a regular file");
		goto fail;
	}
	if (st.st_size > SECRET_FILE_MAX) {
		error_printf(err, errlen, "larger than %d bytes", SECRET_FILE_MAX);
		goto fail;
	}
	/* Loose permissions are allowed (some mounts cannot be changed) but worth a word. */
	if (st.st_mode & S_IROTH)
		log_warning("secrets: %s is readable by every user on this host (mode %04o); chmod 600 it",
			    path, (unsigned)(st.st_mode & 07777));
	else if (st.st_mode & S_IRGRP)
		log_warning("secrets: %s is readable by its group (mode %04o); chmod 600 it", path,
			    (unsigned)(st.st_mode & 07777));
	buffer = malloc((size_t)st.st_size + 1);
	if (buffer == NULL) {
		error_printf(err, errlen, "out of memory");
		goto fail;
	}
	/* Read up to the size fstat gave; a file that grows meanwhile is cut there (and then fails to parse). */
	while (used < (size_t)st.st_size) {
		ssize_t n = read(fd, buffer + used, (size_t)st.st_size - used);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			error_printf(err, errlen, "read failed: %s", strerror(errno));
			goto fail;
		}
		if (n == 0)
			break;
		used += (size_t)n;
	}
	buffer[used] = '\0';
	close(fd);
	*len = used;
	return buffer;
fail:
	if (buffer != NULL) {
		OPENSSL_cleanse(buffer, used);
		free(buffer);
	}
	close(fd);
	return NULL;
}

static bool is_secret_file_name(const char *name)
{
	size_t len = strlen(name);

	/* Dotfiles include editors' temporaries and Kubernetes' "..data" links. */
	return name[0] != '.' && len > 5 && strcmp(name + len - 5, ".json") == 0;
}

static int compare_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * Whoever can list the directory learns the user names, and whoever can
 * write to it can add a user of their own: worth a warning, like a loose file.
 */
static void warn_if_directory_open(DIR *handle, const char *dir)
{
	struct stat st;

	if (fstat(dirfd(handle), &st) != 0)
		return;
	if (st.st_mode & (S_IWGRP | S_IWOTH))
		log_warning("secrets: directory %s is writable by others than its owner (mode %04o); chmod 700 it",
			    dir, (unsigned)(st.st_mode & 07777));
	else if (st.st_mode & (S_IRGRP | S_IXGRP | S_IROTH | S_IXOTH))
		log_warning("secrets: directory %s is open to its group or every user (mode %04o); chmod 700 it",
			    dir, (unsigned)(st.st_mode & 07777));
}

/* The names of dir's secret files, sorted bytewise so "later file wins" does not depend on the locale. */
static char **list_secret_files(const char *dir, size_t *count, char *err, size_t errlen)
{
	DIR *handle;
	struct dirent *entry;
	char **names = NULL;
	size_t used = 0, capacity = 0;

	handle = opendir(dir);
	if (handle == NULL) {
		error_printf(err, errlen, "cannot open secrets directory %s: %s", dir, strerror(errno));
		return NULL;
	}
	warn_if_directory_open(handle, dir);
	for (;;) {
		errno = 0;
		entry = readdir(handle);
		if (entry == NULL)
			break;
		if (!is_secret_file_name(entry->d_name))
			continue;
		if (used == capacity) {
			size_t new_capacity = capacity == 0 ? 16 : capacity * 2;
			char **grown = realloc(names, new_capacity * sizeof(*names));

			if (grown == NULL) {
				errno = ENOMEM;
				break;
			}
			names = grown;
			capacity = new_capacity;
		}
		names[used++] = duplicate_string(entry->d_name);
	}
	if (errno != 0) {
		error_printf(err, errlen, "cannot read secrets directory %s: %s", dir, strerror(errno));
		for (size_t i = 0; i < used; i++)
			free(names[i]);
		free(names);
		closedir(handle);
		return NULL;
	}
	closedir(handle);
	if (used > 0)
		qsort(names, used, sizeof(*names), compare_names);
	*count = used;
	/* An empty directory is a valid (empty) store, not an error: return a non-NULL list. */
	if (names == NULL)
		names = xcalloc(1, sizeof(*names));
	return names;
}

/*
 * Add one secret to the store being built. A user seen in an earlier file is
 * replaced: files are handled in name order, so the last one wins.
 */
static void store_add(struct secret_store *store, size_t *capacity, struct secret *s,
		      const char *path)
{
	for (size_t i = 0; i < store->count; i++) {
		if (strcmp(store->entries[i].username, s->username) == 0) {
			log_warning("secrets: user \"%s\" is defined again in %s, which overrides "
				    "the earlier file", s->username, path);
			secret_clear(&store->entries[i]);
			store->entries[i] = *s;
			return;
		}
	}
	if (store->count == *capacity) {
		size_t new_capacity = *capacity == 0 ? 16 : *capacity * 2;
		store->entries = xrealloc(store->entries, new_capacity * sizeof(*store->entries));
		*capacity = new_capacity;
	}
	store->entries[store->count++] = *s;
}

/* Read, parse and verify one file; false (with a logged warning) when it is skipped. */
static bool load_secret_file(const char *path, struct secret *out)
{
	char reason[256] = "";
	char *text;
	size_t len = 0;
	int rc;

	text = read_secret_file(path, &len, reason, sizeof(reason));
	if (text == NULL) {
		log_warning("secrets: skipping %s: %s", path, reason);
		return false;
	}
	rc = secret_parse_json(text, len, out, reason, sizeof(reason));
	OPENSSL_cleanse(text, len);
	free(text);
	if (rc != 0) {
		log_warning("secrets: skipping %s: %s", path, reason);
		return false;
	}
	if (!reuse_previous_verifier(out) && secret_compute_verifier(out, reason, sizeof(reason)) != 0) {
		log_warning("secrets: skipping %s: %s", path, reason);
		secret_clear(out);
		return false;
	}
	return true;
}

static struct secret_store *store_new(void)
{
	struct secret_store *store = xcalloc(1, sizeof(*store));

	return store;
}

/*
 * Make the merge of the directory's and Secrets Manager's secrets current.
 * The caller holds reload_mutex. A user in both gets Secrets Manager's.
 */
static void publish_merged_locked(void)
{
	struct secret_store *merged = store_new(), *old_store;
	size_t capacity = 0;

	for (size_t i = 0; directory_layer != NULL && i < directory_layer->count; i++) {
		const struct secret *s = &directory_layer->entries[i];
		struct secret copy;

		if (managed_layer != NULL && store_lookup_locked(managed_layer, s->username) != NULL) {
			log_warning("secrets: user \"%s\" is in secrets_dir and in secrets_manager_secrets; "
				    "the Secrets Manager secret is used", s->username);
			continue;
		}
		secret_copy(&copy, s);
		store_add(merged, &capacity, &copy, "secrets_dir");
	}
	for (size_t i = 0; managed_layer != NULL && i < managed_layer->count; i++) {
		struct secret copy;

		secret_copy(&copy, &managed_layer->entries[i]);
		store_add(merged, &capacity, &copy, "secrets_manager_secrets");
	}
	if (merged->count > 0)
		qsort(merged->entries, merged->count, sizeof(merged->entries[0]), compare_secrets_by_username);

	pthread_mutex_lock(&store_mutex);
	old_store = current_store;
	current_store = merged;
	pthread_mutex_unlock(&store_mutex);
	/* Lookups copy out under the mutex, so nobody can still be reading the old store. */
	store_free(old_store);
}

void secrets_set_managed(const struct secret *entries, size_t count)
{
	struct secret_store *store = store_new();
	size_t capacity = 0;

	for (size_t i = 0; i < count; i++) {
		struct secret copy;

		secret_copy(&copy, &entries[i]);
		store_add(store, &capacity, &copy, "secrets_manager_secrets");
	}
	if (store->count > 0)
		qsort(store->entries, store->count, sizeof(store->entries[0]), compare_secrets_by_username);
	pthread_mutex_lock(&reload_mutex);
	store_free(managed_layer);
	managed_layer = store;
	publish_merged_locked();
	pthread_mutex_unlock(&reload_mutex);
}

int secrets_reload(const char *dir, char *err, size_t errlen)
{
	struct secret_store *store;
	size_t file_count = 0, capacity = 0;
	char **names;
	int loaded;

	if (dir == NULL) {
		error_printf(err, errlen, "no secrets directory configured");
		return -1;
	}
	pthread_mutex_lock(&reload_mutex);
	/* An empty secrets_dir: every secret comes from Secrets Manager. */
	if (dir[0] == '\0') {
		store_free(directory_layer);
		directory_layer = store_new();
		publish_merged_locked();
		pthread_mutex_unlock(&reload_mutex);
		return 0;
	}
	names = list_secret_files(dir, &file_count, err, errlen);
	if (names == NULL) {
		pthread_mutex_unlock(&reload_mutex);
		return -1;
	}
	store = xcalloc(1, sizeof(*store));
	__atomic_store_n(&skipped_files, 0, __ATOMIC_RELAXED);
	for (size_t i = 0; i < file_count; i++) {
		struct secret s;
		size_t path_len = strlen(dir) + 1 + strlen(names[i]) + 1;
		char *path = xmalloc(path_len);

		snprintf(path, path_len, "%s/%s", dir, names[i]);
		if (load_secret_file(path, &s))
			store_add(store, &capacity, &s, path);
		else
			__atomic_store_n(&skipped_files, skipped_files + 1, __ATOMIC_RELAXED);
		free(path);
		free(names[i]);
	}
	free(names);
	if (store->count > 0)
		qsort(store->entries, store->count, sizeof(store->entries[0]),
		      compare_secrets_by_username);
	loaded = store->count > INT_MAX ? INT_MAX : (int)store->count;

	store_free(directory_layer);
	directory_layer = store;
	publish_merged_locked();
	pthread_mutex_unlock(&reload_mutex);
	return loaded;
}

void secrets_shutdown(void)
{
	struct secret_store *old_store;

	pthread_mutex_lock(&reload_mutex);
	pthread_mutex_lock(&store_mutex);
	old_store = current_store;
	current_store = NULL;
	pthread_mutex_unlock(&store_mutex);
	store_free(old_store);
	store_free(directory_layer);
	store_free(managed_layer);
	directory_layer = NULL;
	managed_layer = NULL;
	pthread_mutex_unlock(&reload_mutex);
}
