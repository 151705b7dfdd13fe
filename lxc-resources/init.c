/*
 * vmchecker-init: PID 1 of a vmchecker guest, LXC container or KVM machine.
 *
 * The guest boots nothing: the executor attaches to it (LXC) or talks to its QEMU
 * guest agent (KVM) to run the build and run steps. PID 1 therefore only has to
 * (1) reap the orphans a student program leaves behind, so zombies do not eat the pids
 * limit, (2) bring up loopback, the guest's only interface, and (3) end quickly on
 * SIGTERM, killing everything in the guest: an LXC guest exits (lxc.signal.halt), so
 * stop() takes milliseconds instead of the 60 s LXC waits for an init that ignores the
 * halt signal; a KVM guest (built with -DPOWER_OFF, exec'd by guest-init.sh, keeping
 * its children such as the guest agent) powers the machine off.
 *
 * Built inside the guest rootfs with the guest's own gcc, by lxc-resources/build-base.sh
 * and kvm-resources/build-image.sh.
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

static void halt(void)
{
    kill(-1, SIGKILL);
#ifdef POWER_OFF
    sync();
    reboot(RB_POWER_OFF);
#else
    while (wait(NULL) > 0)
        ;
    _exit(0);
#endif
}

int main(void)
{
    sigset_t set;
    int sig;

    sigfillset(&set);
    sigprocmask(SIG_BLOCK, &set, NULL);
    loopback_up();
    while (waitpid(-1, NULL, WNOHANG) > 0)  /* children that ended before we took over */
        ;
    for (;;) {
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGCHLD) {
            while (waitpid(-1, NULL, WNOHANG) > 0)
                ;
        } else if (sig == SIGTERM || sig == SIGINT || sig == SIGPWR) {
            halt();
        }
    }
}
