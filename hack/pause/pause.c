/* The sandbox ("pause") process of every Pod on the local real nodes.
 *
 * It holds the Pod's namespaces open, does nothing else, reaps zombies (it is PID 1 when the Pod
 * shares its process namespace) and exits on SIGINT/SIGTERM, which is what the container runtime
 * sends when the sandbox is stopped. Built with `gcc -static`, it is the only file of the
 * localhost/localmodel-pause image, so no registry is needed for the sandbox.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int signo) {
    (void)signo;
    _exit(0);
}

static void on_child(int signo) {
    (void)signo;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && argv[1][0] == '-' && argv[1][1] == 'v') {
        puts("localmodel-pause 1");
        return 0;
    }
    struct sigaction stop = {.sa_handler = on_stop};
    struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
    if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0 ||
        sigaction(SIGCHLD, &child, NULL) < 0) {
        perror("sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
}
