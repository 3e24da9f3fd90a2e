/*
 * c_floor: the floor of a broadcast's server CPU: write() the same frames to N sockets.
 *
 * Not a pub/sub server. It accepts WebSocket upgrades (just enough of RFC 6455: the 101 with the
 * right Sec-WebSocket-Accept, SHA-1 and base64 written here from FIPS 180-4 and RFC 4648),
 * answers the first frame of each socket (a Phoenix phx_join) with an "ok" phx_reply, and keeps
 * the sockets. A connection that starts with "GO" instead of "GET" is the control line of
 * bench/src/bin/cpu_per_delivery:
 *
 *     GO <batch> <count>\n          then <count> lines, each one message's text
 *
 * c_floor then sends message 0 to every socket, message 1 to every socket, ... (a broadcast
 * loop), `batch` consecutive frames per write() (1: one write per delivery, the floor of a
 * server that does not coalesce; <count>: one write per socket, the floor of one that does),
 * and answers on the control connection with its own CPU for the loop (getrusage):
 *
 *     ok cpu_us=.. user_us=.. sys_us=.. writes=.. sockets=.. errors=..\n
 *
 * A connection that sends "RESET\n" closes every socket kept so far (a new client starts with
 * it: c_floor reads nothing after the join, so it would not notice the old ones are gone).
 *
 * Blocking sockets, one thread, TCP_NODELAY like the servers it is compared with. Bounded: it
 * exits by itself after --lifetime seconds (default 900), and on SIGTERM.
 *
 * Usage: c_floor [--listen] 127.0.0.1:0 [--lifetime SECS]   (prints "listening on ADDR")
 *        c_floor --self-test                                 (SHA-1 / accept-key vectors)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define HEAD_MAX 8192
#define CONTROL_MAX (1 << 20)
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* ---- SHA-1 (FIPS 180-4, section 6.1) ------------------------------------------------------ */

static uint32_t rotl(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1_block(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[80];
    for (int t = 0; t < 16; t++)
        w[t] = (uint32_t)p[4 * t] << 24 | (uint32_t)p[4 * t + 1] << 16 |
               (uint32_t)p[4 * t + 2] << 8 | (uint32_t)p[4 * t + 3];
    for (int t = 16; t < 80; t++)
        w[t] = rotl(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int t = 0; t < 80; t++) {
        uint32_t f, k;
        if (t < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        } else if (t < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        } else if (t < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t tmp = rotl(a, 5) + f + e + k + w[t];
        e = d;
        d = c;
        c = rotl(b, 30);
        b = a;
        a = tmp;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

static void sha1(const uint8_t *msg, size_t len, uint8_t out[20])
{
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t full = len / 64 * 64;
    for (size_t i = 0; i < full; i += 64)
        sha1_block(h, msg + i);
    /* The tail, the 0x80 byte, zeros, and the length in bits (big-endian): one or two blocks. */
    uint8_t tail[128] = {0};
    size_t rest = len - full;
    memcpy(tail, msg + full, rest);
    tail[rest] = 0x80;
    size_t blocks = rest + 1 + 8 <= 64 ? 1 : 2;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        tail[blocks * 64 - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t i = 0; i < blocks; i++)
        sha1_block(h, tail + 64 * i);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(h[i] >> 8);
        out[4 * i + 3] = (uint8_t)h[i];
    }
}

/* ---- base64 (RFC 4648, section 4), with padding; returns the length written ---------------- */

static size_t base64(const uint8_t *in, size_t n, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = abc[v >> 18 & 63];
        out[o++] = abc[v >> 12 & 63];
        out[o++] = i + 1 < n ? abc[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? abc[v & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

/* Sec-WebSocket-Accept for a client key (RFC 6455, section 4.2.2). `out` holds 29 bytes. */
static void accept_key(const char *key, size_t key_len, char out[29])
{
    char buf[256];
    uint8_t digest[20];
    if (key_len > sizeof buf - sizeof WS_GUID)
        key_len = sizeof buf - sizeof WS_GUID;
    memcpy(buf, key, key_len);
    memcpy(buf + key_len, WS_GUID, sizeof WS_GUID - 1);
    sha1((const uint8_t *)buf, key_len + sizeof WS_GUID - 1, digest);
    base64(digest, 20, out);
}

static int self_test(void)
{
    uint8_t d[20];
    char hex[41], acc[29];
    sha1((const uint8_t *)"abc", 3, d);
    for (int i = 0; i < 20; i++)
        sprintf(hex + 2 * i, "%02x", d[i]);
    int ok = strcmp(hex, "a9993e364706816aba3e25717850c26c9cd0d89d") == 0;
    /* Two blocks of padding: 56 bytes of input. */
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha1((const uint8_t *)two, strlen(two), d);
    for (int i = 0; i < 20; i++)
        sprintf(hex + 2 * i, "%02x", d[i]);
    ok &= strcmp(hex, "84983e441c3bd26ebaae4aa1f95129e5e54670f1") == 0;
    accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, acc); /* RFC 6455, section 1.3 */
    ok &= strcmp(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0;
    printf("c_floor self-test: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}

/* ---- I/O helpers ----------------------------------------------------------------------------- */

static int write_all(int fd, const uint8_t *p, size_t n, long *writes)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (writes)
            (*writes)++;
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_exact(int fd, uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Case-insensitive search for header `name` in an HTTP head; its trimmed value, or NULL. */
static const char *header(const char *head, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (const char *line = strstr(head, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        if (strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            const char *end = strstr(v, "\r\n");
            if (!end)
                return NULL;
            while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
                end--;
            *len = (size_t)(end - v);
            return v;
        }
    }
    return NULL;
}

/* One WebSocket frame from the client (masked); unmasked payload into `out` (NUL-terminated). */
static int read_client_frame(int fd, char *out, size_t cap, size_t *len)
{
    uint8_t h[14];
    if (read_exact(fd, h, 2) < 0)
        return -1;
    uint64_t n = h[1] & 0x7f;
    int masked = h[1] & 0x80;
    if (n == 126) {
        if (read_exact(fd, h + 2, 2) < 0)
            return -1;
        n = (uint64_t)h[2] << 8 | h[3];
    } else if (n == 127) {
        return -1; /* a join is small */
    }
    uint8_t mask[4] = {0};
    if (masked && read_exact(fd, mask, 4) < 0)
        return -1;
    if (n + 1 > cap)
        return -1;
    if (read_exact(fd, (uint8_t *)out, (size_t)n) < 0)
        return -1;
    for (uint64_t i = 0; i < n; i++)
        out[i] ^= (char)mask[i % 4];
    out[n] = '\0';
    *len = (size_t)n;
    return 0;
}

/* An unmasked server frame header for a text payload of `n` bytes; returns its length. */
static size_t frame_header(uint8_t *h, size_t n)
{
    h[0] = 0x81;
    if (n < 126) {
        h[1] = (uint8_t)n;
        return 2;
    }
    h[1] = 126;
    h[2] = (uint8_t)(n >> 8);
    h[3] = (uint8_t)n;
    return 4;
}

/* ---- the two kinds of connection -------------------------------------------------------------- */

/* Upgrade, answer the join, return 0 when the socket is to be kept. */
static int subscriber(int fd, const char *head)
{
    size_t klen;
    const char *key = header(head, "Sec-WebSocket-Key", &klen);
    if (!key) {
        static const char bad[] = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        write_all(fd, (const uint8_t *)bad, sizeof bad - 1, NULL);
        return -1;
    }
    char acc[29], resp[256];
    accept_key(key, klen, acc);
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     acc);
    if (write_all(fd, (const uint8_t *)resp, (size_t)n, NULL) < 0)
        return -1;
    /* The join: `[join_ref,ref,topic,"phx_join",{}]`; reply `[join_ref,ref,topic,"phx_reply",ok]`. */
    char join[1024];
    size_t jlen;
    if (read_client_frame(fd, join, sizeof join, &jlen) < 0)
        return -1;
    char *comma = join;
    for (int i = 0; i < 3 && comma; i++)
        comma = strchr(i ? comma + 1 : comma, ',');
    if (!comma)
        return -1;
    char text[1200];
    int tl = snprintf(text, sizeof text, "%.*s,\"phx_reply\",{\"response\":{},\"status\":\"ok\"}]",
                      (int)(comma - join), join);
    uint8_t out[1300];
    size_t hl = frame_header(out, (size_t)tl);
    memcpy(out + hl, text, (size_t)tl);
    return write_all(fd, out, hl + (size_t)tl, NULL);
}

static long usec(struct timeval tv) { return tv.tv_sec * 1000000L + tv.tv_usec; }

/* The control line and its messages are in `buf` (`len` bytes, complete): run the loop. */
static void go(int ctl, char *buf, const int *subs, size_t nsubs)
{
    long batch = 0, count = 0;
    char *line = strchr(buf, '\n');
    if (sscanf(buf, "GO %ld %ld", &batch, &count) != 2 || batch < 1 || count < 1 || !line) {
        static const char bad[] = "error bad control line\n";
        write_all(ctl, (const uint8_t *)bad, sizeof bad - 1, NULL);
        return;
    }
    if (batch > count)
        batch = count;
    /* Every frame once, back to back, so frames m..m+batch-1 are one contiguous run. */
    size_t cap = CONTROL_MAX + (size_t)count * 4, used = 0;
    uint8_t *frames = malloc(cap);
    size_t *off = calloc((size_t)count + 1, sizeof *off);
    if (!frames || !off)
        exit(1);
    char *p = line + 1;
    for (long m = 0; m < count; m++) {
        char *end = strchr(p, '\n');
        if (!end)
            end = p + strlen(p);
        size_t n = (size_t)(end - p);
        off[m] = used;
        used += frame_header(frames + used, n);
        memcpy(frames + used, p, n);
        used += n;
        p = *end ? end + 1 : end;
    }
    off[count] = used;

    struct rusage r0, r1;
    long writes = 0, errors = 0;
    getrusage(RUSAGE_SELF, &r0);
    for (long m = 0; m < count; m += batch) {
        long last = m + batch < count ? m + batch : count;
        for (size_t s = 0; s < nsubs; s++)
            if (write_all(subs[s], frames + off[m], off[last] - off[m], &writes) < 0)
                errors++;
    }
    getrusage(RUSAGE_SELF, &r1);
    long user = usec(r1.ru_utime) - usec(r0.ru_utime);
    long sys = usec(r1.ru_stime) - usec(r0.ru_stime);
    char out[256];
    int n = snprintf(out, sizeof out,
                     "ok cpu_us=%ld user_us=%ld sys_us=%ld writes=%ld sockets=%zu errors=%ld\n",
                     user + sys, user, sys, writes, nsubs, errors);
    write_all(ctl, (const uint8_t *)out, (size_t)n, NULL);
    free(frames);
    free(off);
}

/* Read until the head ends (GET) or the control message is complete (GO: 1 + count lines). */
static ssize_t read_request(int fd, char *buf, size_t cap)
{
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        len += (size_t)r;
        buf[len] = '\0';
        if (strncmp(buf, "GO ", 3) == 0) {
            long batch, count;
            if (sscanf(buf, "GO %ld %ld", &batch, &count) != 2)
                return (ssize_t)len;
            long lines = 0;
            for (size_t i = 0; i < len; i++)
                lines += buf[i] == '\n';
            if (lines >= count + 1)
                return (ssize_t)len;
        } else if (strstr(buf, "\r\n\r\n") || strcmp(buf, "RESET\n") == 0) {
            return (ssize_t)len;
        }
        if (len + 1 >= cap)
            return -1;
    }
}

int main(int argc, char **argv)
{
    const char *listen_at = "127.0.0.1:0";
    unsigned lifetime = 900;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--self-test") == 0)
            return self_test();
        else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
            listen_at = argv[++i];
        else if (strcmp(argv[i], "--lifetime") == 0 && i + 1 < argc)
            lifetime = (unsigned)atoi(argv[++i]);
        else
            listen_at = argv[i];
    }
    char host[64];
    const char *colon = strrchr(listen_at, ':');
    if (!colon || (size_t)(colon - listen_at) >= sizeof host) {
        fprintf(stderr, "c_floor: listen address must be IPv4:PORT\n");
        return 2;
    }
    memcpy(host, listen_at, (size_t)(colon - listen_at));
    host[colon - listen_at] = '\0';
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "c_floor: bad address %s\n", host);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    alarm(lifetime); /* SIGALRM's default action ends the process */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 4096) < 0) {
        perror("c_floor: listen");
        return 1;
    }
    socklen_t sl = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
    printf("listening on %s:%u\n", ip, ntohs(sa.sin_port));
    fflush(stdout);

    int *subs = NULL;
    size_t nsubs = 0, cap = 0;
    char *buf = malloc(CONTROL_MAX);
    if (!buf)
        return 1;
    long accept_errors = 0;
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno != EINTR) {
                if (accept_errors++ < 5)
                    perror("c_floor: accept");
                usleep(50000);
            }
            continue;
        }
        struct timeval tv = {.tv_sec = 5};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        ssize_t len = read_request(fd, buf, CONTROL_MAX);
        if (len > 0 && strncmp(buf, "GET ", 4) == 0) {
            if (subscriber(fd, buf) == 0) {
                if (nsubs == cap) {
                    cap = cap ? cap * 2 : 1024;
                    subs = realloc(subs, cap * sizeof *subs);
                    if (!subs)
                        return 1;
                }
                subs[nsubs++] = fd;
                continue;
            }
        } else if (len > 0 && strncmp(buf, "GO ", 3) == 0) {
            go(fd, buf, subs, nsubs);
        } else if (len > 0 && strncmp(buf, "RESET\n", 6) == 0) {
            for (size_t s = 0; s < nsubs; s++)
                close(subs[s]);
            char out[64];
            int n = snprintf(out, sizeof out, "ok closed=%zu\n", nsubs);
            write_all(fd, (const uint8_t *)out, (size_t)n, NULL);
            nsubs = 0;
        }
        close(fd);
    }
}
