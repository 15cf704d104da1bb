/*
 * inspect.c: the benchmark's "inspect" filter written against libmilter, to compare
 * milterd with the reference C implementation doing the same work.
 *
 * At every header and body chunk it reads every byte (counting and summing them, so the
 * work cannot be optimised away); at end of message it adds
 *   X-Inspect: headers=<n> bytes=<n> body=<n> sum=<n>
 * exactly as bench/filters/inspect.ts does. `bytes` counts header name and value bytes,
 * `body` counts body bytes, `sum` is the sum of all those bytes modulo 2^32.
 *
 * Plain libmilter defaults on purpose: no xxfi_negotiate, so libmilter decides the protocol
 * flags itself (it asks for no NR_* "no reply" flags, so the MTA waits for a reply to every
 * header and body chunk). That is how most C milters in the wild run.
 *
 * Build: cc -O2 -o inspect inspect.c -lmilter -lpthread
 * Run:   ./inspect inet:PORT@127.0.0.1   (or unix:/path)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <libmilter/mfapi.h>

/* Per-connection state (libmilter runs one thread per connection). */
struct inspect {
	unsigned long headers; /* headers seen in this message */
	unsigned long bytes;   /* header name + value bytes */
	unsigned long body;    /* body bytes */
	uint32_t sum;          /* sum of every byte read, mod 2^32 */
};

static struct inspect *
state(SMFICTX *ctx)
{
	struct inspect *s = smfi_getpriv(ctx);
	if (s == NULL) {
		s = calloc(1, sizeof *s);
		if (s == NULL)
			return NULL;
		smfi_setpriv(ctx, s);
	}
	return s;
}

static void
reset(SMFICTX *ctx)
{
	struct inspect *s = smfi_getpriv(ctx);
	if (s != NULL)
		memset(s, 0, sizeof *s);
}

static void
read_bytes(struct inspect *s, const unsigned char *p, size_t n, unsigned long *count)
{
	uint32_t sum = s->sum;
	for (size_t i = 0; i < n; i++)
		sum += p[i];
	s->sum = sum;
	*count += n;
}

static sfsistat
inspect_header(SMFICTX *ctx, char *name, char *value)
{
	struct inspect *s = state(ctx);
	if (s == NULL)
		return SMFIS_TEMPFAIL;
	s->headers++;
	read_bytes(s, (const unsigned char *)name, strlen(name), &s->bytes);
	read_bytes(s, (const unsigned char *)value, strlen(value), &s->bytes);
	return SMFIS_CONTINUE;
}

static sfsistat
inspect_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
	struct inspect *s = state(ctx);
	if (s == NULL)
		return SMFIS_TEMPFAIL;
	read_bytes(s, chunk, len, &s->body);
	return SMFIS_CONTINUE;
}

static sfsistat
inspect_eom(SMFICTX *ctx)
{
	struct inspect *s = state(ctx);
	char value[160];
	if (s == NULL)
		return SMFIS_TEMPFAIL;
	snprintf(value, sizeof value, "headers=%lu bytes=%lu body=%lu sum=%lu",
	    s->headers, s->bytes, s->body, (unsigned long)s->sum);
	reset(ctx);
	if (smfi_addheader(ctx, "X-Inspect", value) != MI_SUCCESS)
		return SMFIS_TEMPFAIL;
	return SMFIS_CONTINUE;
}

static sfsistat
inspect_abort(SMFICTX *ctx)
{
	reset(ctx);
	return SMFIS_CONTINUE;
}

static sfsistat
inspect_close(SMFICTX *ctx)
{
	free(smfi_getpriv(ctx));
	smfi_setpriv(ctx, NULL);
	return SMFIS_CONTINUE;
}

static struct smfiDesc desc = {
	"inspect",        /* xxfi_name */
	SMFI_VERSION,     /* xxfi_version */
	SMFIF_ADDHDRS,    /* xxfi_flags */
	NULL,             /* xxfi_connect */
	NULL,             /* xxfi_helo */
	NULL,             /* xxfi_envfrom */
	NULL,             /* xxfi_envrcpt */
	inspect_header,   /* xxfi_header */
	NULL,             /* xxfi_eoh */
	inspect_body,     /* xxfi_body */
	inspect_eom,      /* xxfi_eom */
	inspect_abort,    /* xxfi_abort */
	inspect_close,    /* xxfi_close */
	NULL,             /* xxfi_unknown */
	NULL,             /* xxfi_data */
	NULL,             /* xxfi_negotiate: none, plain libmilter defaults */
};

int
main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s inet:PORT@HOST|unix:/path\n", argv[0]);
		return 2;
	}
	if (smfi_setconn(argv[1]) == MI_FAILURE || smfi_setbacklog(256) == MI_FAILURE) {
		fprintf(stderr, "inspect: bad connection spec %s\n", argv[1]);
		return 1;
	}
	if (smfi_register(desc) == MI_FAILURE) {
		fprintf(stderr, "inspect: smfi_register failed\n");
		return 1;
	}
	/* Open the socket before announcing readiness, so the parent can connect at once. */
	if (smfi_opensocket(1) == MI_FAILURE) {
		fprintf(stderr, "inspect: cannot open %s\n", argv[1]);
		return 1;
	}
	printf("ready\n");
	fflush(stdout);
	return smfi_main() == MI_SUCCESS ? 0 : 1;
}
