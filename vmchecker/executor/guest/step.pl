#!/usr/bin/perl
# One build or run step of a KVM guest, run as root by the QEMU guest agent
# (perl -e "$(cat step.pl)" ARGS...; perl-base is in every Debian guest; POSIX.pm is
# avoided: it costs 0.4 s to load under TCG).
#
# Arguments: cgroup parent, cgroup name, bytes kept per stream, timeout (s), memory.max,
# pids.max, cpu.max, uid, gid, PATH, HOME, cwd, argv...
#
# Puts the step in a cgroup v2 of its own (PARENT/NAME) with the given limits ("max" for
# memory or pids: no limit, left at the fresh cgroup's default), runs argv there as
# uid:gid in cwd with a clean environment, keeps the first bytes of its stdout and stderr
# and counts the rest, kills the whole cgroup (cgroup.kill) at the timeout and when the
# step's main process ends (leftover background processes), then prints one line
#   vmck EXIT SIGNAL TIMED_OUT CPU_USEC PEAK_BYTES OUT_KEPT OUT_TOTAL ERR_KEPT ERR_TOTAL
# ("-" where unknown) followed by the kept stdout and stderr bytes. Exits non-zero, with
# a message on stderr, only when the step could not be set up.
use strict; use warnings;
my ($top, $name, $cap, $timeout, $mem, $pids, $cpu, $uid, $gid, $path, $home, $cwd, @argv) = @ARGV;
my $cg = "$top/$name";
sub put { my ($f, $v) = @_; open(my $h, ">", $f) or return 0; print {$h} $v; return close($h) }
sub limit { my ($f, $v) = @_; return $v eq "max" || put("$cg/$f", $v) }
sub slurp { my ($f) = @_; open(my $h, "<", $f) or return ""; local $/; my $v = <$h>; return $v // "" }
sub now { return (split " ", slurp("/proc/uptime"))[0] }
sub nap { select(undef, undef, undef, $_[0]) }
sub kill_all { put("$cg/cgroup.kill", 1); my $end = now() + 5; nap(0.01) while slurp("$cg/cgroup.procs") =~ /\d/ && now() < $end }
mkdir $top; put("$top/cgroup.subtree_control", "+memory +pids +cpu");
mkdir $cg or die "cannot create cgroup $cg: $!\n";
limit("memory.max", $mem) && limit("pids.max", $pids) or die "cannot set limits in $cg: $!\n";
put("$cg/memory.swap.max", 0); put("$cg/cpu.max", $cpu);
pipe(my $or, my $ow) && pipe(my $er, my $ew) or die "pipe: $!\n";
my $start = now();
my $pid = fork() // die "fork: $!\n";
if (!$pid) {
    close $or; close $er;
    open(STDIN, "<", "/dev/null"); open(STDOUT, ">&", $ow); open(STDERR, ">&", $ew);
    put("$cg/cgroup.procs", $$) or do { print STDERR "vmchecker: cannot enter cgroup $cg: $!\n"; exit 126 };
    if ($uid != 0) { $( = $gid; $) = "$gid $gid"; $< = $> = $uid; $< == $uid or do { print STDERR "vmchecker: cannot become uid $uid\n"; exit 126 } }
    chdir $cwd or do { print STDERR "vmchecker: cannot enter $cwd: $!\n"; exit 126 };
    %ENV = (PATH => $path, HOME => $home, LANG => "C.UTF-8", TERM => "dumb");
    exec { $argv[0] } @argv or do { print STDERR "vmchecker: cannot run $argv[0]: $!\n"; exit 127 };
}
close $ow; close $ew;
my @streams = ([$or, "", 0], [$er, "", 0]);
my %sink = map { fileno($_->[0]) => $_ } @streams;
my ($status, $timed_out, $deadline) = (undef, 0, $start + $timeout);
while (1) {
    if (!defined $status) {
        if (waitpid($pid, 1) == $pid) { $status = $?; kill_all(); $deadline = now() + 5 }
        elsif (now() >= $deadline) { $timed_out = 1; kill_all(); waitpid($pid, 0); $status = $?; $deadline = now() + 5 }
    }
    last if defined $status && (!%sink || now() >= $deadline);
    if (!%sink) { nap(0.02); next }
    my $rin = ""; vec($rin, $_, 1) = 1 for keys %sink;
    next if select(my $rout = $rin, undef, undef, 0.02) <= 0;
    for my $fd (keys %sink) {
        next unless vec($rout, $fd, 1);
        my $s = $sink{$fd};
        my $got = sysread($s->[0], my $chunk, 65536);
        if (!$got) { close $s->[0]; delete $sink{$fd}; next }
        $s->[2] += $got;
        my $room = $cap - length $s->[1];
        $s->[1] .= substr($chunk, 0, $room) if $room > 0;
    }
}
my ($usec) = slurp("$cg/cpu.stat") =~ /usage_usec (\d+)/;
my ($peak) = slurp("$cg/memory.peak") =~ /(\d+)/;
kill_all(); rmdir $cg;
binmode STDOUT;
printf "vmck %s %s %d %s %s %d %d %d %d\n", ($status & 127) ? "-" : $status >> 8, ($status & 127) || "-",
    $timed_out, $usec // "-", $peak // "-", length $streams[0][1], $streams[0][2], length $streams[1][1], $streams[1][2];
print $streams[0][1], $streams[1][1];
