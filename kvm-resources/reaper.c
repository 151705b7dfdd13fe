/*
 * vmchecker-reaper: what PID 1 of a vmchecker KVM guest becomes once guest-init.sh has
 * set the guest up (it execs this, keeping PID 1 and its children, the guest agent).
 *
 * It (1) reaps the orphans student programs leave, so zombies do not pile up, (2) brings
 * up loopback, the guest's only interface, and (3) powers the guest off on SIGTERM or
 * SIGPWR (what libvirt's shutdown sends through ACPI is handled by the kernel).
 *
 * Built inside the guest rootfs by build-image.sh with the guest's own gcc.
 */
#include <net/if.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void loopback_up(void)
{
    struct ifreq ifr;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);

    if (fd < 0)
        return;
    memset(&ifr, 0, sizeof(ifr));
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        ioctl(fd, SIOCSIFFLAGS, &ifr);
    }
    close(fd);
}

int main(void)
{
    sigset_t set;
    int sig;

    sigfillset(&set);
    sigprocmask(SIG_BLOCK, &set, NULL);
    loopback_up();
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    for (;;) {
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGCHLD) {
            while (waitpid(-1, NULL, WNOHANG) > 0)
                ;
        } else if (sig == SIGTERM || sig == SIGPWR || sig == SIGINT) {
            kill(-1, SIGKILL);
            sync();
            reboot(RB_POWER_OFF);
        }
    }
}
