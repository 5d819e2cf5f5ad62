/*
 * greeter: the example team's service, a small HTTP server in C (no runtime to install).
 *
 *   GET /health  -> {"version":"<release>","host":"<address>"}
 *   GET /        -> hello from release <release>
 *
 * It binds to APP_HOST:PORT (release.toml's port_variable is PORT); its release is the
 * VERSION file the release carries. `server --check` says it can run, and exits.
 *
 * It reloads without dropping a request: a master holds the listening socket and runs a
 * worker started from the release `current` points at (../../current from its own
 * release directory), handing it the socket. On SIGHUP the master starts a worker from
 * `current` again; once that one says it serves, the old one stops accepting, finishes
 * what it has in flight and exits (a new worker that does not start leaves the old one
 * serving). SIGTERM or SIGINT stops both, requests in flight finished. Each connection is
 * served by a child of the worker, which a stop lets finish.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#define READY_WITHIN_MS 30000

static volatile sig_atomic_t stopping, reloading;
static char version[64] = "unknown";
static const char *host = "0.0.0.0";

static void on_stop(int sig) { (void)sig; stopping = 1; }
static void on_reload(int sig) { (void)sig; reloading = 1; }

static void read_version(void) {
    FILE *f = fopen("VERSION", "r");
    if (f && fgets(version, sizeof version, f)) version[strcspn(version, "\r\n")] = 0;
    if (f) fclose(f);
}

static void reply(int fd, int status, const char *type, const char *body) {
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, status == 200 ? "OK" : "Not Found", type, strlen(body));
    if (write(fd, head, n) < 0 || write(fd, body, strlen(body)) < 0) return;
}

static void serve(int fd) {
    char req[2048] = {0}, body[256];
    size_t got = 0;
    struct timeval idle = {5, 0};  /* a client that says nothing does not hold a stop */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);
    while (got < sizeof req - 1 && !strstr(req, "\r\n\r\n")) {
        ssize_t n = read(fd, req + got, sizeof req - 1 - got);
        if (n <= 0) return;
        got += (size_t)n;
    }
    if (strncmp(req, "GET /health ", 12) == 0 || strncmp(req, "GET /health?", 12) == 0) {
        snprintf(body, sizeof body, "{\"version\":\"%s\",\"host\":\"%s\"}", version, host);
        reply(fd, 200, "application/json", body);
    } else if (strncmp(req, "GET / ", 6) == 0) {
        snprintf(body, sizeof body, "hello from release %s\n", version);
        reply(fd, 200, "text/plain", body);
    } else {
        reply(fd, 404, "text/plain", "not found\n");
    }
}

static int worker(int listener, int ready) {
    pid_t master = getppid();
    int children = 0;
    if (write(ready, "ready", 5) != 5) return 1;
    close(ready);
    fprintf(stderr, "release %s serving on %s (pid %d)\n", version, host, getpid());
    while (!stopping && getppid() == master) {
        struct pollfd p = {listener, POLLIN, 0};
        while (waitpid(-1, NULL, WNOHANG) > 0) children--;
        if (poll(&p, 1, 200) <= 0) continue;
        int fd = accept(listener, NULL, NULL);
        if (fd < 0) continue;
        pid_t child = fork();
        if (child == 0) {
            signal(SIGTERM, SIG_IGN);  /* a stop lets the request in flight finish */
            signal(SIGINT, SIG_IGN);
            close(listener);
            serve(fd);
            close(fd);
            _exit(0);
        }
        if (child > 0) children++;
        close(fd);
    }
    close(listener);
    while (children > 0 && wait(NULL) > 0) children--;
    return 0;
}

/* A worker from the release `current` points at, once it says it serves; 0 if not. */
static pid_t spawn(int listener) {
    char release[PATH_MAX], program[PATH_MAX + 16], fd_text[16], ready_text[16];
    int pipe_fds[2];
    if (!realpath("../../current", release) && !getcwd(release, sizeof release)) return 0;
    snprintf(program, sizeof program, "%s/bin/server", release);
    if (pipe(pipe_fds) != 0) return 0;
    pid_t pid = fork();
    if (pid == 0) {
        close(pipe_fds[0]);
        snprintf(fd_text, sizeof fd_text, "%d", listener);
        snprintf(ready_text, sizeof ready_text, "%d", pipe_fds[1]);
        setenv("APP_LISTEN_FD", fd_text, 1);
        setenv("APP_READY_FD", ready_text, 1);
        if (chdir(release) == 0) execl(program, program, (char *)NULL);
        _exit(127);
    }
    close(pipe_fds[1]);
    char said[8] = {0};
    struct pollfd p = {pipe_fds[0], POLLIN, 0};
    if (pid > 0 && poll(&p, 1, READY_WITHIN_MS) > 0 && read(pipe_fds[0], said, 5) == 5 &&
        strcmp(said, "ready") == 0) {
        close(pipe_fds[0]);
        return pid;
    }
    close(pipe_fds[0]);
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    fprintf(stderr, "a worker from %s did not start; the serving one stays\n", release);
    return 0;
}

static void finish(pid_t pid) {
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

static int master(void) {
    const char *port_text = getenv("PORT") ? getenv("PORT") : "8080";
    struct sockaddr_in addr = {0};
    int one = 1, listener = socket(AF_INET, SOCK_STREAM, 0);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(port_text));
    if (listener < 0 || inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "cannot listen on %s:%s\n", host, port_text);
        return 1;
    }
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 128)) {
        fprintf(stderr, "cannot listen on %s:%s: %s\n", host, port_text, strerror(errno));
        return 1;
    }
    pid_t current = spawn(listener);
    if (!current) return 1;
    fprintf(stderr, "master %d holds %s:%s\n", getpid(), host, port_text);
    while (!stopping) {
        poll(NULL, 0, 200);  /* a signal ends the wait early; the tick catches a race */
        if (reloading) {
            reloading = 0;
            pid_t fresh = spawn(listener);
            if (fresh) {  /* the new worker serves: the old one finishes and goes */
                finish(current);
                current = fresh;
            }
        }
        if (waitpid(current, NULL, WNOHANG) == current) {
            fprintf(stderr, "the worker exited\n");
            return 1;
        }
    }
    finish(current);
    return 0;
}

int main(int argc, char **argv) {
    struct sigaction stop = {0}, reload = {0};
    stop.sa_handler = on_stop;
    reload.sa_handler = on_reload;
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGINT, &stop, NULL);
    sigaction(SIGHUP, &reload, NULL);
    signal(SIGPIPE, SIG_IGN);
    read_version();
    if (getenv("APP_HOST") && *getenv("APP_HOST")) host = getenv("APP_HOST");
    if (argc > 1 && strcmp(argv[1], "--check") == 0) {
        printf("greeter %s can run\n", version);
        return 0;
    }
    if (getenv("APP_LISTEN_FD")) {
        int listener = atoi(getenv("APP_LISTEN_FD")), ready = atoi(getenv("APP_READY_FD"));
        unsetenv("APP_LISTEN_FD");
        unsetenv("APP_READY_FD");
        fcntl(listener, F_SETFD, FD_CLOEXEC);
        return worker(listener, ready);
    }
    return master();
}
