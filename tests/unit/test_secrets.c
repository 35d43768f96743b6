/*
 * test_secrets.c: unit tests for secrets.c: parsing one JSON secret, and
 * reloading a directory of them (bad files skipped and logged, duplicates,
 * SCRAM verifiers kept for unchanged passwords).
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "log.h"
#include "secrets.h"

#define ERR_LEN 256

/* ------------------------------------------------------------- parsing */

/* Parse a secret and compute its verifier, as the loader does for a new user. */
static int parse(const char *json, struct secret *out, char *err)
{
	err[0] = '\0';
	if (secret_parse_json(json, strlen(json), out, err, ERR_LEN) != 0)
		return -1;
	if (secret_compute_verifier(out, err, ERR_LEN) != 0) {
		secret_clear(out);
		return -1;
	}
	return 0;
}

/* The verifier must be what scram_compute_keys gives for the password and the stored salt. */
static void assert_verifier_matches(const struct secret *s, const char *password)
{
	uint8_t stored[SCRAM_KEY_LEN], server[SCRAM_KEY_LEN];

	cr_assert_eq(s->scram.iterations, SCRAM_DEFAULT_ITERATIONS);
	cr_assert_eq(scram_compute_keys(password, s->scram.salt, SCRAM_SALT_LEN, s->scram.iterations, stored,
					server), 0);
	cr_assert_arr_eq(s->scram.stored_key, stored, SCRAM_KEY_LEN);
	cr_assert_arr_eq(s->scram.server_key, server, SCRAM_KEY_LEN);
}

Test(parse, full_secret)
{
	struct secret s;
	char err[ERR_LEN];

	cr_assert_eq(parse("{\"username\": \"app\", \"password\": \"p@ss\", \"engine\": \"postgres\","
			   " \"host\": \"db.internal\", \"port\": 5433, \"dbname\": \"shop\","
			   " \"dbInstanceIdentifier\": \"x\"}", &s, err), 0, "%s", err);
	cr_assert_str_eq(s.username, "app");
	cr_assert_str_eq(s.password, "p@ss");
	cr_assert_str_eq(s.host, "db.internal");
	cr_assert_str_eq(s.dbname, "shop");
	cr_assert_eq(s.port, 5433);
	assert_verifier_matches(&s, "p@ss");
	secret_clear(&s);
	cr_assert_null(s.username);
	cr_assert_null(s.password);
}

Test(parse, minimal_secret)
{
	struct secret s;
	char err[ERR_LEN];

	cr_assert_eq(parse("{\"username\": \"app\", \"password\": \"pw\"}", &s, err), 0, "%s", err);
	cr_assert_str_eq(s.username, "app");
	cr_assert_null(s.host);
	cr_assert_null(s.dbname);
	cr_assert_eq(s.port, 0);
	assert_verifier_matches(&s, "pw");
	secret_clear(&s);
}

Test(parse, each_parse_gets_a_fresh_salt)
{
	struct secret a, b;
	char err[ERR_LEN];

	cr_assert_eq(parse("{\"username\": \"app\", \"password\": \"pw\"}", &a, err), 0);
	cr_assert_eq(parse("{\"username\": \"app\", \"password\": \"pw\"}", &b, err), 0);
	cr_assert_arr_neq(a.scram.salt, b.scram.salt, SCRAM_SALT_LEN);
	cr_assert_arr_neq(a.scram.stored_key, b.scram.stored_key, SCRAM_KEY_LEN);
	secret_clear(&a);
	secret_clear(&b);
}

Test(parse, aurora_engine_and_null_optional_fields)
{
	struct secret s;
	char err[ERR_LEN];

	cr_assert_eq(parse("{\"username\": \"app\", \"password\": \"pw\", "
			   "\"engine\": \"aurora-postgresql\", \"host\": null}", &s, err), 0, "%s",
		     err);
	cr_assert_null(s.host);
	secret_clear(&s);
}

Test(parse, port_as_string)
{
	struct secret s;
	char err[ERR_LEN];

	cr_assert_eq(parse("{\"username\": \"app\", \"password\": \"pw\", \"port\": \"6543\"}", &s,
			   err), 0, "%s", err);
	cr_assert_eq(s.port, 6543);
	secret_clear(&s);
}

/* Each bad input must fail with a reason mentioning what is wrong, and leave out empty. */
static void assert_rejected(const char *json, const char *reason_part)
{
	struct secret s;
	char err[ERR_LEN];

	memset(&s, 0x5a, sizeof(s));
	cr_assert_eq(parse(json, &s, err), -1, "accepted %s", json);
	cr_assert(strstr(err, reason_part) != NULL, "reason \"%s\" lacks \"%s\" for %s", err,
		  reason_part, json);
	cr_assert_null(s.username);
	cr_assert_null(s.password);
	cr_assert_null(s.host);
	cr_assert_null(s.dbname);
}

Test(parse, missing_fields)
{
	assert_rejected("{\"password\": \"pw\"}", "\"username\"");
	assert_rejected("{\"username\": \"app\"}", "\"password\"");
	assert_rejected("{\"username\": \"\", \"password\": \"pw\"}", "\"username\" is empty");
	assert_rejected("{\"username\": \"app\", \"password\": \"\"}", "\"password\" is empty");
	assert_rejected("{}", "\"username\"");
}

Test(parse, wrong_types)
{
	assert_rejected("{\"username\": 7, \"password\": \"pw\"}", "\"username\"");
	assert_rejected("{\"username\": \"app\", \"password\": null}", "\"password\"");
	assert_rejected("{\"username\": \"app\", \"password\": [\"pw\"]}", "\"password\"");
	assert_rejected("{\"username\": \"app\", \"password\": \"pw\", \"host\": 1}", "\"host\"");
	assert_rejected("{\"username\": \"app\", \"password\": \"pw\", \"dbname\": {}}", "\"dbname\"");
	assert_rejected("{\"username\": \"app\", \"password\": \"pw\", \"engine\": 1}", "\"engine\"");
	assert_rejected("{\"username\": \"app\", \"password\": \"pw\", \"port\": true}", "\"port\"");
	assert_rejected("{\"username\": \"app\", \"password\": \"pw\", \"port\": 5432.5}", "\"port\"");
	assert_rejected("[\"username\", \"password\"]", "not an object");
}

Test(parse, bad_ports)
{
	assert_rejected("{\"username\": \"app\", \"password\": \"pw\", \"port\": 0}", "\"port\"");
	assert_rejected("{\"username\": \"app\", \"password\": \"pw\", \"port\": 65536}", "\"port\"");
	assert_rejected("{\"username\": \"app\", \"password\": \"pw\", \"port\": -5}", "\"port\"");
	assert_rejected("{\"username\": \"app\", \"password\": \"pw\", \"port\": \"54x\"}", "\"port\"");
	assert_rejected("{\"username\": \"app\", \"password\": \"pw\", \"port\": \" 5432\"}",
			"\"port\"");
	assert_rejected("{\"username\": \"app\", \"password\": \"pw\", \"port\": \"\"}", "\"port\"");
	assert_rejected("{\"username\": \"app\", \"password\": \"pw\", \"port\": "
			"\"99999999999999999999999\"}", "\"port\"");
}

Test(parse, bad_engine)
{
	assert_rejected("{\"username\": \"app\", \"password\": \"pw\", \"engine\": \"mysql\"}",
			"\"engine\" is \"mysql\"");
	assert_rejected("{\"username\": \"app\", \"password\": \"pw\", \"engine\": \"Postgres\"}",
			"\"engine\"");
}

Test(parse, invalid_json_does_not_echo_the_password)
{
	struct secret s;
	char err[ERR_LEN];

	/* jansson would quote the text near the error, which here is the password. */
	cr_assert_eq(parse("{\"username\": \"app\", \"password\": \"hunter2", &s, err), -1);
	cr_assert(strstr(err, "invalid JSON") != NULL, "%s", err);
	cr_assert_null(strstr(err, "hunter2"), "%s", err);
	cr_assert_eq(parse("{\"username\": \"app\", \"password\": hunter2}", &s, err), -1);
	cr_assert_null(strstr(err, "hunter2"), "%s", err);
	cr_assert_eq(parse("", &s, err), -1);
	cr_assert_eq(secret_parse_json(NULL, 0, &s, err, sizeof(err)), -1);
	/* Duplicate keys are ambiguous: which password was meant? */
	cr_assert_eq(parse("{\"username\": \"app\", \"password\": \"a\", \"password\": \"b\"}", &s,
			   err), -1);
}

Test(parse, length_is_respected)
{
	struct secret s;
	char err[ERR_LEN];
	const char *json = "{\"username\": \"app\", \"password\": \"pw\"}garbage";

	cr_assert_eq(secret_parse_json(json, strlen(json) - strlen("garbage"), &s, err, sizeof(err)),
		     0, "%s", err);
	secret_clear(&s);
	cr_assert_eq(secret_parse_json(json, strlen(json), &s, err, sizeof(err)), -1);
}

Test(parse, copy_is_deep)
{
	struct secret a, b;
	char err[ERR_LEN];

	cr_assert_eq(parse("{\"username\": \"app\", \"password\": \"pw\", \"host\": \"h\"}", &a,
			   err), 0);
	secret_copy(&b, &a);
	cr_assert_neq(a.username, b.username);
	cr_assert_neq(a.password, b.password);
	cr_assert_str_eq(b.username, "app");
	cr_assert_str_eq(b.password, "pw");
	cr_assert_str_eq(b.host, "h");
	cr_assert_null(b.dbname);
	cr_assert_arr_eq(a.scram.salt, b.scram.salt, SCRAM_SALT_LEN);
	cr_assert_arr_eq(a.scram.stored_key, b.scram.stored_key, SCRAM_KEY_LEN);
	cr_assert_arr_eq(a.scram.server_key, b.scram.server_key, SCRAM_KEY_LEN);
	cr_assert_eq(a.scram.iterations, b.scram.iterations);
	secret_clear(&a);
	cr_assert_str_eq(b.password, "pw");
	secret_clear(&b);
	cr_assert_eq(b.scram.iterations, 0);
	cr_assert_eq(b.scram.stored_key[0] | b.scram.stored_key[31] | b.scram.salt[0], 0);
}

/* ------------------------------------------------------------ directories */

/* A scratch secrets directory and a log file the warnings go to. */
static char test_dir[64];
static char log_path[96];

static void setup_directory(void)
{
	snprintf(test_dir, sizeof(test_dir), "/tmp/pgmux-secrets-XXXXXX");
	cr_assert_not_null(mkdtemp(test_dir));
	snprintf(log_path, sizeof(log_path), "%s.log", test_dir);
	cr_assert_eq(log_open(log_path), 0);
	log_set_level(LOG_LEVEL_WARNING);
}

static void remove_directory(void)
{
	DIR *dir = opendir(test_dir);
	struct dirent *entry;
	char path[sizeof(test_dir) + sizeof(entry->d_name) + 1];

	secrets_shutdown();
	log_close();
	unlink(log_path);
	if (dir == NULL)
		return;
	while ((entry = readdir(dir)) != NULL) {
		if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", test_dir, entry->d_name);
		unlink(path);
	}
	closedir(dir);
	rmdir(test_dir);
}

static void write_file(const char *name, const char *content, mode_t mode)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", test_dir, name);
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs(content, f);
	fclose(f);
	cr_assert_eq(chmod(path, mode), 0);
}

/* Everything logged since the test began. */
static char *read_log(void)
{
	static char text[16384];
	FILE *f = fopen(log_path, "r");
	size_t n;

	cr_assert_not_null(f);
	n = fread(text, 1, sizeof(text) - 1, f);
	text[n] = '\0';
	fclose(f);
	return text;
}

static int reload(void)
{
	char err[ERR_LEN] = "";
	int loaded = secrets_reload(test_dir, err, sizeof(err));

	cr_assert(loaded >= 0, "reload failed: %s", err);
	return loaded;
}

TestSuite(store, .init = setup_directory, .fini = remove_directory);

Test(store, good_and_bad_files)
{
	struct secret s;
	char *log_text;

	write_file("app.json", "{\"username\": \"app\", \"password\": \"pw1\", \"port\": \"5432\"}",
		   0600);
	write_file("report.json", "{\"username\": \"report\", \"password\": \"pw2\"}", 0600);
	write_file("broken.json", "{\"username\": \"broken\", \"password\": \"topsecret\"", 0600);
	write_file("mysql.json", "{\"username\": \"my\", \"password\": \"pw\", \"engine\": \"mysql\"}",
		   0600);
	write_file("notes.txt", "{\"username\": \"notes\", \"password\": \"pw\"}", 0600);
	write_file(".hidden.json", "{\"username\": \"hidden\", \"password\": \"pw\"}", 0600);

	cr_assert_eq(reload(), 2);
	cr_assert(secrets_find("app", &s));
	cr_assert_str_eq(s.password, "pw1");
	cr_assert_eq(s.port, 5432);
	assert_verifier_matches(&s, "pw1");
	secret_clear(&s);
	cr_assert(secrets_find("report", &s));
	cr_assert_str_eq(s.password, "pw2");
	secret_clear(&s);
	cr_assert_not(secrets_find("broken", &s));
	cr_assert_not(secrets_find("my", &s));
	cr_assert_not(secrets_find("notes", &s));
	cr_assert_not(secrets_find("hidden", &s));

	log_text = read_log();
	cr_assert(strstr(log_text, "broken.json: invalid JSON") != NULL, "%s", log_text);
	cr_assert(strstr(log_text, "mysql.json: \"engine\"") != NULL, "%s", log_text);
	cr_assert_null(strstr(log_text, "notes.txt"), "%s", log_text);
	cr_assert_null(strstr(log_text, "topsecret"), "%s", log_text);
	cr_assert_null(strstr(log_text, "readable by every user"), "%s", log_text);
}

Test(store, find_unknown_user)
{
	struct secret s;

	cr_assert_not(secrets_find("app", &s), "nothing is loaded yet");
	cr_assert_null(s.username);
	write_file("app.json", "{\"username\": \"app\", \"password\": \"pw\"}", 0600);
	cr_assert_eq(reload(), 1);
	cr_assert_not(secrets_find("nobody", &s));
	cr_assert_null(s.username);
	cr_assert_null(s.password);
	cr_assert_not(secrets_find("ap", &s));
	cr_assert_not(secrets_find(NULL, &s));
}

Test(store, empty_directory)
{
	cr_assert_eq(reload(), 0);
}

Test(store, many_users_are_all_found)
{
	char name[32], json[128];
	struct secret s;

	/* Enough users to exercise growth of the store and its sorted lookup. */
	for (int i = 0; i < 40; i++) {
		snprintf(name, sizeof(name), "user%02d.json", 39 - i);
		snprintf(json, sizeof(json), "{\"username\": \"u%d\", \"password\": \"p%d\"}", i, i);
		write_file(name, json, 0600);
	}
	cr_assert_eq(reload(), 40);
	for (int i = 0; i < 40; i++) {
		char user[16], password[16];

		snprintf(user, sizeof(user), "u%d", i);
		snprintf(password, sizeof(password), "p%d", i);
		cr_assert(secrets_find(user, &s), "%s missing", user);
		cr_assert_str_eq(s.password, password);
		secret_clear(&s);
	}
}

Test(store, later_file_wins_for_duplicate_user)
{
	struct secret s;
	char *log_text;

	write_file("b.json", "{\"username\": \"app\", \"password\": \"from-b\"}", 0600);
	write_file("a.json", "{\"username\": \"app\", \"password\": \"from-a\"}", 0600);
	cr_assert_eq(reload(), 1);
	cr_assert(secrets_find("app", &s));
	cr_assert_str_eq(s.password, "from-b");
	assert_verifier_matches(&s, "from-b");
	secret_clear(&s);
	log_text = read_log();
	cr_assert(strstr(log_text, "user \"app\" is defined again in") != NULL, "%s", log_text);
	cr_assert(strstr(log_text, "b.json") != NULL, "%s", log_text);
}

Test(store, unchanged_password_keeps_verifier)
{
	struct secret before, after;

	write_file("app.json", "{\"username\": \"app\", \"password\": \"pw\"}", 0600);
	cr_assert_eq(reload(), 1);
	cr_assert(secrets_find("app", &before));
	/* Other fields may change without a new verifier. */
	write_file("app.json", "{\"username\": \"app\", \"password\": \"pw\", \"host\": \"new\"}",
		   0600);
	cr_assert_eq(reload(), 1);
	cr_assert(secrets_find("app", &after));
	cr_assert_str_eq(after.host, "new");
	cr_assert_arr_eq(before.scram.salt, after.scram.salt, SCRAM_SALT_LEN);
	cr_assert_arr_eq(before.scram.stored_key, after.scram.stored_key, SCRAM_KEY_LEN);
	cr_assert_arr_eq(before.scram.server_key, after.scram.server_key, SCRAM_KEY_LEN);
	secret_clear(&before);
	secret_clear(&after);
}

Test(store, changed_password_changes_verifier)
{
	struct secret before, after;

	write_file("app.json", "{\"username\": \"app\", \"password\": \"old\"}", 0600);
	cr_assert_eq(reload(), 1);
	cr_assert(secrets_find("app", &before));
	write_file("app.json", "{\"username\": \"app\", \"password\": \"new\"}", 0600);
	cr_assert_eq(reload(), 1);
	cr_assert(secrets_find("app", &after));
	cr_assert_str_eq(after.password, "new");
	cr_assert_arr_neq(before.scram.salt, after.scram.salt, SCRAM_SALT_LEN);
	cr_assert_arr_neq(before.scram.stored_key, after.scram.stored_key, SCRAM_KEY_LEN);
	assert_verifier_matches(&after, "new");
	secret_clear(&before);
	secret_clear(&after);
}

Test(store, removed_file_removes_user)
{
	struct secret s;
	char path[256];

	write_file("app.json", "{\"username\": \"app\", \"password\": \"pw\"}", 0600);
	write_file("other.json", "{\"username\": \"other\", \"password\": \"pw\"}", 0600);
	cr_assert_eq(reload(), 2);
	snprintf(path, sizeof(path), "%s/app.json", test_dir);
	cr_assert_eq(unlink(path), 0);
	cr_assert_eq(reload(), 1);
	cr_assert_not(secrets_find("app", &s));
	cr_assert(secrets_find("other", &s));
	secret_clear(&s);
}

Test(store, unreadable_directory_keeps_old_store)
{
	struct secret s;
	char err[ERR_LEN] = "";
	char missing[128];

	write_file("app.json", "{\"username\": \"app\", \"password\": \"pw\"}", 0600);
	cr_assert_eq(reload(), 1);
	snprintf(missing, sizeof(missing), "%s/does-not-exist", test_dir);
	cr_assert_eq(secrets_reload(missing, err, sizeof(err)), -1);
	cr_assert(strstr(err, "does-not-exist") != NULL, "%s", err);
	cr_assert(secrets_find("app", &s));
	secret_clear(&s);
	cr_assert_eq(secrets_reload(NULL, err, sizeof(err)), -1);
}

Test(store, world_readable_file_is_loaded_with_warning)
{
	struct secret s;
	char *log_text;

	write_file("loose.json", "{\"username\": \"loose\", \"password\": \"pw\"}", 0644);
	cr_assert_eq(reload(), 1);
	cr_assert(secrets_find("loose", &s));
	secret_clear(&s);
	log_text = read_log();
	cr_assert(strstr(log_text, "loose.json is readable by every user") != NULL, "%s", log_text);
}

Test(store, symlinked_file_is_followed_and_directories_skipped)
{
	struct secret s;
	char target[256], link_path[256], sub[256];

	/* Kubernetes secret volumes: app.json -> ..data/app.json */
	write_file(".real", "{\"username\": \"linked\", \"password\": \"pw\"}", 0600);
	snprintf(target, sizeof(target), "%s/.real", test_dir);
	snprintf(link_path, sizeof(link_path), "%s/linked.json", test_dir);
	cr_assert_eq(symlink(target, link_path), 0);
	snprintf(sub, sizeof(sub), "%s/dir.json", test_dir);
	cr_assert_eq(mkdir(sub, 0700), 0);
	cr_assert_eq(reload(), 1);
	cr_assert(secrets_find("linked", &s));
	secret_clear(&s);
	cr_assert(strstr(read_log(), "dir.json: not a regular file") != NULL, "%s", read_log());
	rmdir(sub);
}

Test(store, shutdown_empties_store)
{
	struct secret s;

	write_file("app.json", "{\"username\": \"app\", \"password\": \"pw\"}", 0600);
	cr_assert_eq(reload(), 1);
	secrets_shutdown();
	cr_assert_not(secrets_find("app", &s));
	/* Shutting down twice, or with nothing loaded, is harmless. */
	secrets_shutdown();
}

Test(store, group_readable_file_is_loaded_with_warning)
{
	const char *log_text;

	write_file("shared.json", "{\"username\": \"shared\", \"password\": \"pw\"}", 0640);
	cr_assert_eq(reload(), 1);
	log_text = read_log();
	cr_assert(strstr(log_text, "shared.json is readable by its group (mode 0640)") != NULL, "%s", log_text);
}

Test(store, open_directory_is_loaded_with_warning_and_a_private_one_without)
{
	const char *log_text;

	write_file("app.json", "{\"username\": \"app\", \"password\": \"pw\"}", 0600);
	cr_assert_eq(reload(), 1);
	log_text = read_log();
	cr_assert_null(strstr(log_text, "directory"), "a 0700 directory is private: %s", log_text);
	cr_assert_eq(chmod(test_dir, 0755), 0);
	cr_assert_eq(reload(), 1);
	log_text = read_log();
	cr_assert(strstr(log_text, "is open to its group or every user (mode 0755); chmod 700 it") != NULL, "%s",
		  log_text);
	cr_assert_eq(chmod(test_dir, 0770), 0);
	cr_assert_eq(reload(), 1);
	log_text = read_log();
	cr_assert(strstr(log_text, "is writable by others than its owner (mode 0770)") != NULL, "%s", log_text);
	cr_assert_eq(chmod(test_dir, 0700), 0);
}
