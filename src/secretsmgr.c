/*
 * secretsmgr.c: AWS Secrets Manager as a source of secrets (see
 * secretsmgr.h). The list of secrets and their last good values belong to
 * whoever runs a read: start-up, then only the aws thread. A secret whose
 * VersionId did not change is not parsed again, so a refresh costs one HTTP
 * call per secret and no PBKDF2 unless a password changed.
 */
#include "secretsmgr.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "aws.h"
#include "config.h"
#include "log.h"
#include "secrets.h"
#include "util.h"

struct managed_secret {
	char *id;         /* name or ARN, as configured */
	char *region;     /* where it is read: the ARN's region, else the default one */
	char *version_id; /* of the value held; NULL before the first good read */
	struct secret secret;
};

static struct managed_secret *managed;
static size_t n_managed;
static void (*on_change)(void);
static struct secretsmgr_stats stats; /* atomic counters; secrets written at start-up */

void secretsmgr_get_stats(struct secretsmgr_stats *out)
{
	out->reads = __atomic_load_n(&stats.reads, __ATOMIC_RELAXED);
	out->read_failures = __atomic_load_n(&stats.read_failures, __ATOMIC_RELAXED);
	out->changes = __atomic_load_n(&stats.changes, __ATOMIC_RELAXED);
	out->secrets = stats.secrets;
}

/* "arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME": REGION (malloc'd), or NULL for a plain name. */
static char *region_of_arn(const char *id)
{
	const char *p = id;

	if (strncmp(id, "arn:", 4) != 0)
		return NULL;
	for (int field = 0; field < 3; field++) {
		p = strchr(p, ':');
		if (p == NULL)
			return NULL;
		p++;
	}
	size_t n = strcspn(p, ":");

	return n > 0 ? strndup(p, n) : NULL;
}

/* Split secrets_manager_secrets into the list; -1 with why in err. */
static int parse_list(const char *text, char *err, size_t errlen)
{
	char *copy = xstrdup(text), *rest = copy, *entry;

	while ((entry = strsep(&rest, ",")) != NULL) {
		char *end;

		while (*entry == ' ' || *entry == '\t')
			entry++;
		end = entry + strlen(entry);
		while (end > entry && (end[-1] == ' ' || end[-1] == '\t'))
			*--end = '\0';
		if (*entry == '\0')
			continue;
		managed = xrealloc(managed, (n_managed + 1) * sizeof(*managed));
		struct managed_secret *m = &managed[n_managed++];

		memset(m, 0, sizeof(*m));
		m->id = xstrdup(entry);
		m->region = region_of_arn(entry);
		if (m->region == NULL && aws_default_region() != NULL)
			m->region = xstrdup(aws_default_region());
		if (m->region == NULL) {
			error_printf(err, errlen, "secrets_manager_secrets: no region to read \"%.200s\" in: set [pgmux] "
				     "aws_region or AWS_REGION, or name the secret by ARN", entry);
			free(copy);
			return -1;
		}
	}
	free(copy);
	return 0;
}

/* Two optional fields of a secret hold the same text (or are both absent). */
static bool same_text(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

/*
 * One GetSecretValue. On success *changed says whether m now holds another
 * user, password, host, port or dbname than before (always true for the
 * first read).
 */
static int read_secret(struct managed_secret *m, bool *changed, char *err, size_t errlen)
{
	json_t *request = json_pack("{s:s, s:s}", "SecretId", m->id, "VersionStage", "AWSCURRENT");
	char *body = json_dumps(request, JSON_COMPACT);
	struct aws_http_response response;
	json_t *answer = NULL;
	const char *version, *text;
	struct secret fresh;
	char why[256];
	int rc = -1;

	*changed = false;
	json_decref(request);
	if (body == NULL)
		out_of_memory("a Secrets Manager request");
	if (aws_call("secretsmanager", "SECRETS_MANAGER", "secretsmanager", m->region, "secretsmanager.GetSecretValue",
		     "application/x-amz-json-1.1", body, &response, why, sizeof(why)) != 0) {
		error_printf(err, errlen, "%s", why);
		free(body);
		goto out; /* no answer: response is empty */
	}
	free(body);
	if (response.status != 200) {
		aws_describe_error(&response, err, errlen);
		goto out;
	}
	answer = json_loadb(response.body, response.len, 0, NULL);
	version = json_string_value(json_object_get(answer, "VersionId"));
	text = json_string_value(json_object_get(answer, "SecretString"));
	if (text == NULL) {
		error_printf(err, errlen, "the secret holds no SecretString (a binary secret cannot be a database secret)");
		goto out;
	}
	/* The same version: nothing to parse (and no PBKDF2). */
	if (version && m->version_id && strcmp(version, m->version_id) == 0) {
		rc = 0;
		goto out;
	}
	if (secret_parse_json(text, strlen(text), &fresh, why, sizeof(why)) != 0) {
		error_printf(err, errlen, "the secret is not a database secret: %s", why);
		goto out;
	}
	if (m->version_id == NULL || strcmp(fresh.username, m->secret.username) != 0 ||
	    strcmp(fresh.password, m->secret.password) != 0) {
		/* The PBKDF2, only for a user or password that changed. */
		if (secret_compute_verifier(&fresh, why, sizeof(why)) != 0) {
			error_printf(err, errlen, "%s", why);
			secret_clear(&fresh);
			goto out;
		}
		secret_clear(&m->secret);
		m->secret = fresh;
		*changed = true;
	} else if (!same_text(fresh.host, m->secret.host) || fresh.port != m->secret.port ||
		   !same_text(fresh.dbname, m->secret.dbname)) {
		/* Where the server is (hosts_from_secret follows it): the verifier stays, the new fields come in. */
		struct secret old = m->secret;

		fresh.scram = old.scram;
		m->secret = fresh;
		secret_clear(&old);
		*changed = true;
	} else {
		secret_clear(&fresh);
	}
	free(m->version_id);
	m->version_id = xstrdup(version ? version : "");
	rc = 0;
out:
	json_decref(answer);
	aws_http_response_free(&response);
	if (rc == 0)
		__atomic_add_fetch(&stats.reads, 1, __ATOMIC_RELAXED);
	else
		__atomic_add_fetch(&stats.read_failures, 1, __ATOMIC_RELAXED);
	return rc;
}

/* Hand every secret read so far to the store. */
static void publish(void)
{
	struct secret *entries = xcalloc(n_managed ? n_managed : 1, sizeof(*entries));
	size_t n = 0;

	for (size_t i = 0; i < n_managed; i++)
		if (managed[i].version_id != NULL)
			entries[n++] = managed[i].secret; /* shallow: secrets_set_managed() copies */
	secrets_set_managed(entries, n);
	free(entries);
}

/* The aws thread's job: read every secret again; a failure keeps the last good value. */
static void refresh(void *arg)
{
	size_t changed_count = 0;

	for (size_t i = 0; i < n_managed; i++) {
		struct managed_secret *m = &managed[i];
		char err[512];
		bool changed;

		if (read_secret(m, &changed, err, sizeof(err)) != 0) {
			log_warning("secrets manager: reading \"%s\" failed, keeping its last good value: %s", m->id, err);
			continue;
		}
		if (changed) {
			changed_count++;
			__atomic_add_fetch(&stats.changes, 1, __ATOMIC_RELAXED);
			log_info("secrets manager: \"%s\" changed (version %.64s, user \"%s\"); new client logins and "
				 "server connections use it", m->id, m->version_id, m->secret.username);
		}
	}
	if (changed_count > 0) {
		publish();
		if (on_change)
			on_change();
	}
}

int secretsmgr_start(const struct config *cfg, void (*changed)(void), char *err, size_t errlen)
{
	bool want_secrets = cfg->secrets_manager_secrets[0] != '\0';
	bool want_iam = cfg->server_auth == SERVER_AUTH_IAM;
	char why[512];

	if (!want_secrets && !want_iam)
		return 0;
	if (aws_init(cfg->aws_region, why, sizeof(why)) != 0) {
		error_printf(err, errlen, "AWS: %s", why);
		return -1;
	}
	if (want_iam && aws_default_region() == NULL) {
		error_printf(err, errlen, "[target] server_auth = iam needs a region: set [pgmux] aws_region or AWS_REGION");
		return -1;
	}
	if (!want_secrets)
		return 0;
	if (parse_list(cfg->secrets_manager_secrets, err, errlen) != 0)
		return -1;
	stats.secrets = (int)n_managed;
	for (size_t i = 0; i < n_managed; i++) {
		bool ignored;

		if (read_secret(&managed[i], &ignored, why, sizeof(why)) != 0) {
			error_printf(err, errlen, "secrets_manager_secrets: cannot read \"%.200s\" (region %s): %s",
				     managed[i].id, managed[i].region, why);
			return -1;
		}
		log_info("secrets manager: read \"%s\" (user \"%s\", version %.64s)", managed[i].id,
			 managed[i].secret.username, managed[i].version_id);
	}
	publish();
	on_change = changed;
	aws_set_job(refresh, NULL, cfg->secrets_refresh_interval_ms);
	return 0;
}

void secretsmgr_refresh_soon(void)
{
	if (n_managed > 0)
		aws_thread_poke();
}

void secretsmgr_shutdown(void)
{
	for (size_t i = 0; i < n_managed; i++) {
		free(managed[i].id);
		free(managed[i].region);
		free(managed[i].version_id);
		secret_clear(&managed[i].secret);
	}
	free(managed);
	managed = NULL;
	n_managed = 0;
}
