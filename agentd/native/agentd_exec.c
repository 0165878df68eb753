/*
 * agentd-exec: the launcher the SDK starts for every tool call.
 *
 *   agentd-exec GO_FD ERR_FD -- COMMAND [ARGS...]
 *
 * It blocks on GO_FD until the SDK has asked agentd to move this process into
 * the tool call's cgroup, so the command executes (and forks) only once it is
 * inside its group. One byte 'g' means go; anything else (EOF: the SDK died or
 * the daemon refused) means exit 127 without running anything.
 *
 * ERR_FD is close-on-exec: if execvp fails, errno is written there as 4 bytes
 * so the SDK can raise FileNotFoundError/PermissionError like subprocess does;
 * a successful exec closes it and the SDK reads EOF.
 *
 *   agentd-exec --ahead SOCK_FD
 *
 * Placed ahead of time (docs/placement.md): the SDK starts it before any
 * command is known and agentd places it in a spare group; it blocks in
 * recvmsg(SOCK_FD) until the SDK sends the command. SOCK_FD is a unix stream
 * socket; the message is a header (struct ahead_header) carrying three fds
 * (the command's stdin, stdout, stderr) as SCM_RIGHTS, then `length` bytes of
 * NUL-terminated strings: the program's path, the cwd ("" keeps the current
 * one), argc argv strings, envc environment strings. EOF or anything malformed
 * means exit 127 without running anything. The reply works like ERR_FD: the
 * socket is close-on-exec, so EOF means the command executes, 4 bytes are the
 * errno of a failed chdir or execve.
 *
 * Written in C rather than Python or sh because it sits on the hot path of
 * every tool call: an exec of this binary costs a fraction of a shell's.
 *
 *   agentd-exec --warm CTL_FD PAGE_FD PROCS_A_FD PROCS_B_FD PERIOD_US
 *
 * The daemon's migration warmer (agentd/cgroups/warmer.py, docs/placement.md):
 * while active, this process moves itself between two empty groups (writing
 * "0" to PROCS_A_FD / PROCS_B_FD, their cgroup.procs) once per period, which
 * keeps the kernel's cgroup_threadgroup_rwsem in its writer-friendly mode. It
 * rests for a period when the daemon placed a process within the last period
 * (CLOCK_MONOTONIC ns at offset 0 of the shared PAGE_FD, written by the
 * daemon), and counts its moves at offset 8. CTL_FD is a pipe: 'a' activates,
 * 'i' deactivates (then it sleeps until the next byte), EOF (the daemon
 * stopped or died) ends it. In C, not in a daemon thread: a move costs tens of
 * microseconds of kernel time here, a Python loop 4-8x that plus GIL hand-offs.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static int parse_fd(const char *s) {
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < 0 || v > 65535) return -1;
    return (int)v;
}

static void report_errno(int fd, int err) {
    ssize_t w;
    do {
        w = write(fd, &err, sizeof err);
    } while (w < 0 && errno == EINTR);
}

struct ahead_header {
    unsigned int length; /* bytes of strings that follow */
    unsigned int argc;
    unsigned int envc;
};

#define AHEAD_MAX_LENGTH (64u << 20)

/* Reads exactly n bytes; 0 on success. */
static int read_full(int fd, char *buf, size_t n) {
    while (n > 0) {
        ssize_t r = read(fd, buf, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        buf += r;
        n -= (size_t)r;
    }
    return 0;
}

static int run_ahead(int sock) {
    struct ahead_header h;
    struct iovec iov = {.iov_base = &h, .iov_len = sizeof h};
    union {
        char buf[CMSG_SPACE(3 * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    ssize_t n;
    do {
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) return 127; /* the SDK went away: never ran anything */
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (c == NULL || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
        c->cmsg_len != CMSG_LEN(3 * sizeof(int)))
        return 127;
    int fds[3];
    memcpy(fds, CMSG_DATA(c), sizeof fds);
    if ((size_t)n < sizeof h && read_full(sock, (char *)&h + n, sizeof h - (size_t)n) != 0)
        return 127;
    if (h.length == 0 || h.length > AHEAD_MAX_LENGTH || h.argc == 0 ||
        h.argc > h.length || h.envc > h.length)
        return 127;
    char *strings = malloc((size_t)h.length + 1);
    char **vec = calloc((size_t)h.argc + h.envc + 2, sizeof(char *));
    if (strings == NULL || vec == NULL || read_full(sock, strings, h.length) != 0) return 127;
    strings[h.length] = '\0';
    /* path, cwd, argv..., NULL, envp..., NULL (vec shares one allocation) */
    char *p = strings, *end = strings + h.length;
    char *path = p;
    p += strlen(p) + 1;
    if (p >= end) return 127;
    char *cwd = p;
    p += strlen(p) + 1;
    char **args = vec, **envp = vec + h.argc + 1;
    for (unsigned int i = 0; i < h.argc + h.envc; i++) {
        if (p >= end) return 127;
        if (i < h.argc)
            args[i] = p;
        else
            envp[i - h.argc] = p;
        p += strlen(p) + 1;
    }
    for (int i = 0; i < 3; i++) {
        /* dup2 clears close-on-exec on the target; the received fds are above 2
         * because 0-2 are open (the SDK starts the launcher with /dev/null). */
        if (dup2(fds[i], i) < 0) {
            report_errno(sock, errno);
            return 127;
        }
    }
    for (int i = 0; i < 3; i++) {
        if (fds[i] > 2) close(fds[i]);
    }
    if (*cwd && chdir(cwd) != 0) {
        report_errno(sock, errno);
        return 127;
    }
    execve(path, args, envp);
    report_errno(sock, errno);
    return 127;
}

static int64_t monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int run_warm(int ctl, int page_fd, const int procs[2], long period_us) {
    volatile int64_t *page = mmap(NULL, 16, PROT_READ | PROT_WRITE, MAP_SHARED, page_fd, 0);
    if (page == MAP_FAILED) return 1;
    close(page_fd);
    const int64_t period_ns = (int64_t)period_us * 1000;
    const int period_ms = (int)((period_us + 999) / 1000);
    int active = 0, index = 0;
    /* Out of the daemon's group at once, into the first warm group. */
    if (write(procs[0], "0", 1) < 0) return 1;
    for (;;) {
        struct pollfd p = {.fd = ctl, .events = POLLIN};
        int r = poll(&p, 1, active ? period_ms : -1);
        if (r < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        if (r > 0) {
            char buf[64];
            ssize_t n = read(ctl, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return 0; /* EOF: the daemon is gone */
            active = buf[n - 1] == 'a'; /* the last word wins */
            continue;
        }
        if (monotonic_ns() - page[0] < period_ns) continue; /* the daemon just moved one */
        index ^= 1;
        if (write(procs[index], "0", 1) == 1) page[1] = page[1] + 1;
    }
}

int main(int argc, char **argv) {
    if (argc == 7 && strcmp(argv[1], "--warm") == 0) {
        int ctl = parse_fd(argv[2]), page_fd = parse_fd(argv[3]);
        int procs[2] = {parse_fd(argv[4]), parse_fd(argv[5])};
        char *end = NULL;
        long period_us = strtol(argv[6], &end, 10);
        if (ctl < 0 || page_fd < 0 || procs[0] < 0 || procs[1] < 0 || *end != '\0' ||
            period_us < 1000 || period_us > 10000000) {
            fprintf(stderr, "agentd-exec: bad --warm arguments\n");
            return 127;
        }
        return run_warm(ctl, page_fd, procs, period_us);
    }
    if (argc == 3 && strcmp(argv[1], "--ahead") == 0) {
        int sock = parse_fd(argv[2]);
        if (sock < 0) {
            fprintf(stderr, "agentd-exec: bad socket argument\n");
            return 127;
        }
        fcntl(sock, F_SETFD, FD_CLOEXEC);
        return run_ahead(sock);
    }
    if (argc < 5 || strcmp(argv[3], "--") != 0) {
        fprintf(stderr, "usage: agentd-exec GO_FD ERR_FD -- COMMAND [ARGS...]\n");
        return 127;
    }
    int go_fd = parse_fd(argv[1]);
    int err_fd = parse_fd(argv[2]);
    if (go_fd < 0 || err_fd < 0) {
        fprintf(stderr, "agentd-exec: bad file descriptor arguments\n");
        return 127;
    }
    char go = 0;
    ssize_t n;
    do {
        n = read(go_fd, &go, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1 || go != 'g') {
        return 127; /* not placed: never run the command outside its group */
    }
    close(go_fd);
    fcntl(err_fd, F_SETFD, FD_CLOEXEC);
    execvp(argv[4], &argv[4]);
    int saved = errno;
    ssize_t w;
    do {
        w = write(err_fd, &saved, sizeof saved);
    } while (w < 0 && errno == EINTR);
    return 127;
}
