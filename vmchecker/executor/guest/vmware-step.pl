#!/usr/bin/perl
# One command of a VMware job, run as root by VMware Tools (StartProgramInGuest), given
# inline (perl -e "$(cat vmware-step.pl)" -- ARGS...; perl-base is in every Debian guest):
#
#   run DIR STUDENT NPROC KEEP PATH CWD ARGV...
#     Makes DIR (its own, 0700), writes its own pid to DIR/pid, leads a process group of
#     its own and runs ARGV in CWD with a clean environment (PATH, HOME, LANG), stdin from
#     /dev/null, stdout to DIR/out and stderr to DIR/err, and RLIMIT_NPROC at NPROC ("-":
#     none; root is exempt, so it bounds the student's processes). When ARGV ends, kills
#     what it left: every other process of its group and every process of STUDENT, until
#     none is left (a fork bomb races). Then writes DIR/report, the one file the host
#     reads back:
#       vmck EXIT SIGNAL CPU_USEC MAXRSS_KB OUT_KEPT OUT_TOTAL ERR_KEPT ERR_TOTAL
#     ("-" where unknown) and the first KEEP bytes of DIR/out and of DIR/err (a flood is
#     cut while reading, never read whole), and exits with ARGV's status.
#   kill DIR STUDENT KEEP
#     What the host runs when a command outlived its time (after TerminateProcessInGuest):
#     kills the group of the pid in DIR/pid and every process of STUDENT, until none is
#     left, then writes DIR/report as above (EXIT "-", SIGNAL 9); exits 1 if some survive.
use strict; use warnings; use Config;
my ($mode, $dir, $student, @rest) = @ARGV;
my @pw = getpwnam($student // "");
# Only root can end the student's processes (a guest_user that is not root runs the
# student's code as itself: no separation, INSTALL says so).
my ($uid, $gid) = @pw && $pw[2] != 0 && $> == 0 ? ($pw[2], $pw[3]) : (undef, undef);
sub slurp { my ($f) = @_; open(my $h, "<", $f) or return ""; local $/; my $v = <$h>; return $v // "" }
sub nap { select(undef, undef, undef, $_[0]) }
sub put { my ($f, $v) = @_; open(my $h, ">:raw", "$f.tmp") or return 0; print {$h} $v; close($h) or return 0; return rename("$f.tmp", $f) }
sub group_of { return slurp("/proc/$_[0]/stat") =~ /.*\)\s+\S+\s+\d+\s+(\d+)/s ? $1 : -1 }
sub uid_of { return slurp("/proc/$_[0]/status") =~ /^Uid:\s+(\d+)/m ? $1 : -1 }
sub left {
    my ($group) = @_;
    opendir(my $d, "/proc") or return ();
    return grep { /^\d+$/ && $_ != $$ && ((defined $group && group_of($_) == $group)
                                          || (defined $uid && uid_of($_) == $uid)) } readdir $d;
}
sub sweep {   # kill -1 as the student ends all its processes at once; the group by name
    my ($group) = @_;
    for (1 .. 200) {
        if (defined $uid) {
            my $k = fork();
            if (defined $k && $k == 0) { $( = $gid; $) = "$gid $gid"; $> = $uid; $< = $uid; kill 'KILL', -1; exit 0 }
            waitpid($k, 0) if $k;
        }
        my @l = left($group);
        return 1 unless @l;
        kill 'KILL', @l;
        nap(0.01);
    }
    return 0;
}
sub usage {   # getrusage(RUSAGE_CHILDREN): 64-bit longs (utime, stime, maxrss...)
    my $nr = $Config{archname} =~ /^x86_64/ ? 98 : $Config{archname} =~ /^aarch64/ ? 165 : undef;
    my $buf = "\0" x 144;
    if (defined $nr && syscall($nr, -1, $buf) == 0) {
        my @f = unpack("q18", $buf);
        return ($f[0] * 1000000 + $f[1] + $f[2] * 1000000 + $f[3], $f[4]);
    }
    my (undef, undef, $cu, $cs) = times;
    return (int(($cu + $cs) * 1000000), "-");
}

sub head {   # the first $keep bytes of a file and its size
    my ($f, $keep) = @_;
    open(my $h, "<:raw", $f) or return ("", 0);
    my $size = -s $h // 0;
    my $got = read($h, my $data, $keep < $size ? $keep : $size) // 0;   # no buffer larger than the file
    return ($got ? $data : "", $size);
}
sub report {
    my ($keep, @fields) = @_;
    my ($out, $out_total) = head("$dir/out", $keep);
    my ($err, $err_total) = head("$dir/err", $keep);
    return put("$dir/report", join(" ", "vmck", @fields, length $out, $out_total, length $err, $err_total)
                              . "\n" . $out . $err);
}

if ($mode eq "kill") {
    my ($keep) = @rest;
    my ($group) = slurp("$dir/pid") =~ /(\d+)/;
    kill 'KILL', $group if defined $group;
    my $swept = sweep($group);
    report($keep, "-", 9, "-", "-") or exit 126;
    exit($swept ? 0 : 1);
}
$mode eq "run" or die "vmware-step: unknown mode $mode\n";
my ($nproc, $keep, $path, $cwd, @argv) = @rest;
mkdir $dir, 0700;
(-d $dir && !-l $dir && (lstat $dir)[4] == $> && chmod(0700, $dir)) or die "vmware-step: bad folder $dir\n";
unlink "$dir/report";
put("$dir/pid", "$$\n") or die "vmware-step: cannot write $dir/pid: $!\n";
setpgrp(0, 0);   # fails only for a session leader, whose group is its pid already
my $pid = fork() // do { put("$dir/report", "error fork: $!\n"); exit 126 };
if (!$pid) {
    open(STDIN, "<", "/dev/null"); open(STDOUT, ">", "$dir/out"); open(STDERR, ">", "$dir/err");
    $SIG{$_} = "DEFAULT" for qw(PIPE XFSZ INT QUIT TERM HUP);
    chdir $cwd or do { print STDERR "vmchecker: cannot enter $cwd: $!\n"; exit 126 };
    %ENV = (PATH => $path, HOME => (getpwuid($<))[7] || "/", LANG => "C.UTF-8", TERM => "dumb");
    @argv = ("prlimit", "--nproc=$nproc:$nproc", "--", @argv) if $nproc ne "-";
    exec { $argv[0] } @argv or do { print STDERR "vmchecker: cannot run $argv[0]: $!\n"; exit 127 };
}
waitpid($pid, 0);
my $status = $?;
my ($usec, $rss) = usage();
sweep($$);
report($keep, ($status & 127) ? "-" : $status >> 8, ($status & 127) || "-", $usec, $rss) or exit 126;
exit(($status & 127) ? 128 + ($status & 127) : $status >> 8);
