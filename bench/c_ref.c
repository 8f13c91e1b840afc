/* bench/c_ref.c: a minimal PrivateChatRoom server in C, the floor of what
 * one core does, to measure beside pcr_server.py with bench/load.py.
 *
 * One thread, epoll (level-triggered), non-blocking sockets.  Everything
 * said during one epoll turn is appended to one shared buffer (`turn`); at
 * the end of the turn each member is sent the part of it that came after
 * it joined, in one send().  What the kernel does not take waits in that
 * member's own buffer, with write interest only until it drains.
 *
 * The protocol (docs/PROTOCOL.md): on accept `ALIAS`; the alias is what
 * comes before the first line end, or the whole first read; then everyone
 * hears `{alias} joined the chat...` and the count; each line is relayed to
 * everyone as `{alias}: {text}` (a line already starting with `{alias}: `
 * keeps it, once); the App's own leave line is dropped; on close everyone
 * left hears `{alias} has left the chat...` and the count.
 *
 * No limits, no logging, no TLS, no web port: a yardstick, not a server.
 *
 *   cc -O2 -D_GNU_SOURCE -o /tmp/c_ref bench/c_ref.c && /tmp/c_ref PORT [HOST]
 *
 * HOST defaults to 127.0.0.1.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_EVENTS 1024
#define READ_SIZE 65536

struct buf {
    char *data;
    size_t len, cap;
};

enum stage { AT_DOOR, IN_ROOM };

struct member {
    int fd;
    enum stage stage;
    char *alias;          /* as given, without its line end */
    size_t alias_len;
    struct buf partial;   /* bytes of a line not ended yet */
    struct buf pending;   /* output the kernel has not taken */
    size_t sent;          /* of `pending`, already sent */
    size_t turn_from;     /* where this member's part of `turn` begins */
    size_t slot;          /* index in `room` */
    int dead;             /* a send failed: close at the end of the turn */
};

static int epfd;
static struct member **by_fd;   /* indexed by file descriptor */
static size_t by_fd_cap;
static struct member **room;    /* members in the room, any order */
static size_t room_len, room_cap;
static struct buf turn;         /* said during this epoll turn */

static void *grow(void *p, size_t size)
{
    p = realloc(p, size);
    if (!p) {
        perror("realloc");
        exit(1);
    }
    return p;
}

static void buf_add(struct buf *b, const char *data, size_t len)
{
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len)
            cap *= 2;
        b->data = grow(b->data, cap);
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static void say(const char *format, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, format);
    int n = vsnprintf(line, sizeof line, format, ap);
    va_end(ap);
    if (n >= (int)sizeof line)
        n = sizeof line - 1;
    buf_add(&turn, line, n);
}

static void say_count(void)
{
    if (room_len == 1)
        say("1 person is online...\n");
    else
        say("%zu people are online...\n", room_len);
}

static void set_interest(struct member *m, int write)
{
    struct epoll_event ev = {.events = EPOLLIN | (write ? EPOLLOUT : 0), .data.fd = m->fd};
    epoll_ctl(epfd, EPOLL_CTL_MOD, m->fd, &ev);
}

/* Send what waits in `pending`; 0 once it is empty, 1 while some is left,
 * -1 if the connection is broken. */
static int flush_pending(struct member *m)
{
    while (m->sent < m->pending.len) {
        ssize_t n = send(m->fd, m->pending.data + m->sent, m->pending.len - m->sent,
                         MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -1;
        }
        m->sent += n;
    }
    m->pending.len = m->sent = 0;
    if (m->pending.cap > READ_SIZE)   /* a burst is over: give its memory back */
        buf_free(&m->pending);
    return 0;
}

static void enter_room(struct member *m)
{
    if (room_len == room_cap) {
        room_cap = room_cap ? room_cap * 2 : 1024;
        room = grow(room, room_cap * sizeof *room);
    }
    m->slot = room_len;
    room[room_len++] = m;
    m->stage = IN_ROOM;
    m->turn_from = turn.len;
    say("%.*s joined the chat...\n", (int)m->alias_len, m->alias);
    say_count();
}

static void leave_room(struct member *m)
{
    struct member *last = room[--room_len];
    room[m->slot] = last;
    last->slot = m->slot;
    say("%.*s has left the chat...\n", (int)m->alias_len, m->alias);
    say_count();
}

static void drop(struct member *m)
{
    if (m->stage == IN_ROOM)
        leave_room(m);
    epoll_ctl(epfd, EPOLL_CTL_DEL, m->fd, NULL);
    close(m->fd);
    by_fd[m->fd] = NULL;
    free(m->alias);
    buf_free(&m->partial);
    buf_free(&m->pending);
    free(m);
}

static int starts_with(const char *s, size_t len, const char *prefix, size_t plen)
{
    return len >= plen && memcmp(s, prefix, plen) == 0;
}

/* One line a member said, without its line end. */
static void relay(struct member *m, const char *text, size_t len)
{
    if (len && text[len - 1] == '\r')
        len--;
    /* The App says `\t{alias} has left the chat...` before it closes; the
     * close itself brings the one leave line everybody must see. */
    if (len == 1 + m->alias_len + 21 && text[0] == '\t' &&
        starts_with(text + 1, len - 1, m->alias, m->alias_len) &&
        memcmp(text + 1 + m->alias_len, " has left the chat...", 21) == 0)
        return;
    if (!(starts_with(text, len, m->alias, m->alias_len) &&
          starts_with(text + m->alias_len, len - m->alias_len, ": ", 2))) {
        buf_add(&turn, m->alias, m->alias_len);
        buf_add(&turn, ": ", 2);
    }
    buf_add(&turn, text, len);
    buf_add(&turn, "\n", 1);
}

/* Relay the whole lines of `partial` + data; keep the rest for later. */
static void take_lines(struct member *m, const char *data, size_t len)
{
    if (m->partial.len) {
        const char *end = memchr(data, '\n', len);
        if (!end) {
            buf_add(&m->partial, data, len);
            return;
        }
        buf_add(&m->partial, data, end - data);
        relay(m, m->partial.data, m->partial.len);
        m->partial.len = 0;
        len -= end + 1 - data;
        data = end + 1;
    }
    const char *end;
    while ((end = memchr(data, '\n', len))) {
        relay(m, data, end - data);
        len -= end + 1 - data;
        data = end + 1;
    }
    if (len)
        buf_add(&m->partial, data, len);
    else if (m->partial.cap > READ_SIZE)
        buf_free(&m->partial);
}

/* The first read is the alias: up to its first line end, or all of it. */
static void take_alias(struct member *m, const char *data, size_t len)
{
    const char *end = memchr(data, '\n', len);
    size_t alias_len = end ? (size_t)(end - data) : len;
    size_t used = end ? alias_len + 1 : len;
    if (alias_len && data[alias_len - 1] == '\r')
        alias_len--;
    m->alias = grow(NULL, alias_len + 1);
    memcpy(m->alias, data, alias_len);
    m->alias[alias_len] = '\0';
    m->alias_len = alias_len;
    enter_room(m);
    take_lines(m, data + used, len - used);
}

static void on_readable(struct member *m)
{
    static char data[READ_SIZE];
    ssize_t n = recv(m->fd, data, sizeof data, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        drop(m);
        return;
    }
    if (m->stage == AT_DOOR)
        take_alias(m, data, n);
    else
        take_lines(m, data, n);
}

static void on_writable(struct member *m)
{
    int left = flush_pending(m);
    if (left < 0)
        drop(m);
    else if (!left)
        set_interest(m, 0);
}

static void on_accept(int listener)
{
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;   /* EAGAIN: all taken; EMFILE and the like: try next turn */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if ((size_t)fd >= by_fd_cap) {
            size_t cap = by_fd_cap ? by_fd_cap : 1024;
            while (cap <= (size_t)fd)
                cap *= 2;
            by_fd = grow(by_fd, cap * sizeof *by_fd);
            memset(by_fd + by_fd_cap, 0, (cap - by_fd_cap) * sizeof *by_fd);
            by_fd_cap = cap;
        }
        struct member *m = grow(NULL, sizeof *m);
        memset(m, 0, sizeof *m);
        m->fd = fd;
        m->stage = AT_DOOR;
        by_fd[fd] = m;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
        if (send(fd, "ALIAS", 5, MSG_NOSIGNAL) != 5)
            drop(m);
    }
}

/* End of a turn: every member gets its part of `turn`, in one send. */
static void flush_turn(void)
{
    while (turn.len) {
        for (size_t i = 0; i < room_len; i++) {
            struct member *m = room[i];
            const char *part = turn.data + m->turn_from;
            size_t len = turn.len - m->turn_from;
            m->turn_from = 0;
            if (!len)
                continue;
            if (m->pending.len) {   /* already waiting for write readiness */
                buf_add(&m->pending, part, len);
                continue;
            }
            ssize_t n = send(m->fd, part, len, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    m->dead = 1;
                    continue;
                }
                n = 0;
            }
            if ((size_t)n < len) {
                buf_add(&m->pending, part + n, len - n);
                set_interest(m, 1);
            }
        }
        turn.len = 0;
        /* Close the broken ones now: their leave lines make another turn. */
        for (size_t i = room_len; i-- > 0;)   /* drop() moves the last into slot i */
            if (room[i]->dead)
                drop(room[i]);
    }
    if (turn.cap > (1u << 20))
        buf_free(&turn);
}

static void raise_open_files_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int listen_on(const char *host, int port)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "c_ref: not an IPv4 address: %s\n", host);
        exit(2);
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        listen(fd, 65535) < 0) {
        perror("c_ref: listen");
        exit(1);
    }
    return fd;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3 || atoi(argv[1]) <= 0 || atoi(argv[1]) > 65535) {
        fprintf(stderr, "usage: %s PORT [HOST]   (HOST: 127.0.0.1 unless given)\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_open_files_limit();
    int listener = listen_on(argc == 3 ? argv[2] : "127.0.0.1", atoi(argv[1]));
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener};
    epoll_ctl(epfd, EPOLL_CTL_ADD, listener, &ev);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n < 0 && errno != EINTR) {
            perror("c_ref: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                on_accept(listener);
                continue;
            }
            struct member *m = (size_t)fd < by_fd_cap ? by_fd[fd] : NULL;
            if (!m)
                continue;   /* closed earlier in this turn */
            if (events[i].events & EPOLLOUT) {
                on_writable(m);
                if (!by_fd[fd])
                    continue;
            }
            if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                on_readable(m);
        }
        flush_turn();
    }
}
