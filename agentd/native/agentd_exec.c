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
 * Written in C rather than Python or sh because it sits on the hot path of
 * every tool call: an exec of this binary costs a fraction of a shell's.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int parse_fd(const char *s) {
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < 0 || v > 65535) return -1;
    return (int)v;
}

int main(int argc, char **argv) {
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
