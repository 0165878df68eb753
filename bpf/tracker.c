// agentd process tracker: fork/exec/exit of watched process trees into a ring buffer.
//
// Compiled by bcc at run time. This program reads ONLY tracepoint arguments (their
// layout comes from tracefs, so it always matches the running kernel) and BPF helpers.
// It never dereferences a kernel struct: the headers bcc compiles against may belong to
// another kernel (see docs/tracking.md).
//
// Attribution lives in the kernel: `procs` maps a process (tgid) to its tool call's key.
// User space seeds it with watch(pid, key); the fork program copies the parent's key to
// the child before the child can run, so a process that lives for microseconds is still
// attributed, even when its own events are lost. Only watched processes emit events.
//
// Resource figures live in the same map entry, so they need no map of their own (no
// extra map-full case) and leave with it at exit: CPU time from sched_switch
// (prev-side, timestamps), peak resident memory from kmem:rss_stat.

#define CLONE_VM_FLAG 0x00000100ULL
#define CLONE_THREAD_FLAG 0x00010000ULL

// Values of the `threads` map: what task_newtask learnt about a clone.
#define NEW_THREAD 1
#define NEW_SHARED_MM 2  // CLONE_VM without CLONE_THREAD: vfork, posix_spawn

#define EV_FORK 1
#define EV_EXEC 2
#define EV_EXIT 3
#define EV_ARGS 4

#define F_EXIT_CODE 1
#define F_EXIT_SIGNAL 2
#define F_TRUNCATED 4
#define F_CPU 8         // exit: cpu_ns is valid
#define F_RSS 16        // exit: peak_rss is valid
#define F_SHARED_MM 256 // state only: runs in its parent's mm (vfork) until it executes
#define F_EXECUTOR 512  // state only: a registered executor; its children are held (below)

// kmem:rss_stat `member` (print fmt of the tracepoint on 6.x): MM_FILEPAGES 0,
// MM_ANONPAGES 1, MM_SWAPENTS 2, MM_SHMEMPAGES 3. Resident = file + anon + shmem.
#define MM_FILEPAGES 0
#define MM_ANONPAGES 1
#define MM_SHMEMPAGES 3
#define MM_MEMBERS 4

#define C_RINGBUF_LOST 0
#define C_MAP_FULL 1
#define C_ARGV_TRUNCATED 2
#define C_EMITTED 3
#define C_HELD 4
#define N_COUNTERS 5

#define FILENAME_MAX_LEN 256
#define ARG_MAX_LEN 256
#define ARGS_MAX 32
#define ARGBUF_LEN 2048

// Signals whose default action ends the process (man 7 signal: Term or Core), bit = signo.
// Real-time signals (32..64) also terminate by default.
#define FATAL_MASK ((1ULL << 1) | (1ULL << 2) | (1ULL << 3) | (1ULL << 4) | (1ULL << 5) | \
    (1ULL << 6) | (1ULL << 7) | (1ULL << 8) | (1ULL << 9) | (1ULL << 10) | (1ULL << 11) | \
    (1ULL << 12) | (1ULL << 13) | (1ULL << 14) | (1ULL << 15) | (1ULL << 16) | (1ULL << 24) | \
    (1ULL << 25) | (1ULL << 26) | (1ULL << 27) | (1ULL << 29) | (1ULL << 30) | (1ULL << 31))

struct proc_state {
    u64 key;       // tool call key (user space maps it to a tool call id)
    u64 cpu_ns;    // on-CPU time of all its threads while watched (+ seed from /proc)
    s64 rss[MM_MEMBERS]; // last size in bytes per rss_stat member, of mm `mm_id`
    s64 peak_rss;  // max of file + anon + shmem seen (or VmHWM seeded by watch())
    s32 exit_code; // from exit_group(2), valid with F_EXIT_CODE
    s32 signal;    // last fatal signal generated for it, valid with F_EXIT_SIGNAL
    u32 flags;
    u32 mm_id;     // rss_stat's hashed mm pointer the sizes belong to (0: not known yet)
};

// Fixed header of every event; `data` follows (exec: filename, args: NUL-separated argv).
struct event {
    u64 key;
    u64 ts;     // bpf_ktime_get_boot_ns(): comparable with /proc/<pid>/stat start times
    u32 type;
    u32 pid;    // the process (tgid)
    u32 ppid;   // fork: parent tgid; exec: old tid; args: calling tid
    u32 flags;
    s32 code;   // exit: exit code or signal number; args: argc
    u32 len;    // bytes of data that follow
    char comm[16];
};

// EXIT: the header (len = 16) and the process's figures.
struct exit_event {
    struct event h;
    u64 cpu_ns;
    s64 peak_rss;
};

struct exec_event {
    struct event h;
    char data[FILENAME_MAX_LEN];
};

// 4096 bytes in all, so that masking the output size with 4095 bounds it for the
// verifier (a clamp with `if` is folded away by the compiler).
#define ARGS_EVENT_SIZE 4096
struct args_event {
    struct event h;
    char data[ARGS_EVENT_SIZE - sizeof(struct event)];
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_HASH(procs, u32, struct proc_state, MAX_PROCS);
// Children created with CLONE_THREAD, noted by task_newtask (which sees clone_flags)
// for sched_process_fork (which does not). LRU: a failed clone cannot leak an entry.
BPF_TABLE("lru_hash", u32, u8, threads, 4096);
// Per CPU: when the task now on it was switched in (bpf_ktime_get_ns), for sched_switch.
BPF_PERCPU_ARRAY(switch_in, u64, 1);
BPF_PERCPU_ARRAY(counters, u64, N_COUNTERS);
BPF_PERCPU_ARRAY(args_scratch, struct args_event, 1);
// Children of executors not yet placed in their tool call's group (tgid -> fork time).
// A child found here at its first system call is stopped (hold_at_first_syscall) until
// user space has placed it: before a system call it cannot fork, so nothing escapes.
// Whoever deletes the entry first owns the outcome: the program (then it stops the
// child and user space must continue it) or user space (then the child never stops).
BPF_HASH(held, u32, u64, 4096);

static __always_inline void count(u32 which) {
    u64 *c = counters.lookup(&which);
    if (c)
        (*c)++;
}

static __always_inline void fill(struct event *e, u32 type, u64 key, u32 pid) {
    e->key = key;
    e->ts = bpf_ktime_get_boot_ns();
    e->type = type;
    e->pid = pid;
    e->ppid = 0;
    e->flags = 0;
    e->code = 0;
    e->len = 0;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
}

TRACEPOINT_PROBE(task, task_newtask) {
    u64 flags = args->clone_flags;
    if (!(flags & (CLONE_THREAD_FLAG | CLONE_VM_FLAG)))
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!procs.lookup(&tgid))
        return 0;
    u32 tid = args->pid;
    u8 kind = (flags & CLONE_THREAD_FLAG) ? NEW_THREAD : NEW_SHARED_MM;
    threads.update(&tid, &kind);
    return 0;
}

// Fires in the parent, after copy_process() and before the child is first woken up.
TRACEPOINT_PROBE(sched, sched_process_fork) {
    u32 ptgid = bpf_get_current_pid_tgid() >> 32;
    struct proc_state *ps = procs.lookup(&ptgid);
    if (!ps)
        return 0;
    u32 child = args->child_pid;
    u8 *kind = threads.lookup(&child);
    u32 child_flags = 0;
    if (kind) {
        u8 k = *kind;
        threads.delete(&child);
        if (k == NEW_THREAD)
            return 0;  // a thread: its process is already watched
        // vfork: its rss_stat events describe the parent's mm until it executes.
        child_flags = F_SHARED_MM;
    }
    u64 key = ps->key;
    u32 parent_flags = ps->flags;
    struct proc_state cs = {};
    cs.key = key;
    cs.flags = child_flags;
    if (procs.update(&child, &cs) != 0)
        count(C_MAP_FULL);
    if (parent_flags & F_EXECUTOR) {  // vfork children too: Python's subprocess uses vfork
        u64 now = bpf_ktime_get_boot_ns();
        held.update(&child, &now);
    }
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    if (!e) {
        count(C_RINGBUF_LOST);
        return 0;
    }
    fill(e, EV_FORK, key, child);
    e->ppid = ptgid;
    events.ringbuf_submit(e, 0);
    count(C_EMITTED);
    return 0;
}

// Attached to raw_syscalls:sys_enter only while an executor is registered (every system
// call on the host pays a hash lookup then). The stop is taken on the way back to user
// space; if that first call is a fork, copy_process() sees the pending signal and
// restarts the call after SIGCONT, so the child forks nothing before it is placed.
// This program deletes the entry, then signals: user space that lost the delete sends
// SIGCONT and looks again shortly after, for the instant between the two.
int hold_at_first_syscall(struct bpf_raw_tracepoint_args *ctx) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u64 *forked = held.lookup(&tgid);
    if (!forked)
        return 0;
    if (held.delete(&tgid) == 0) {
        bpf_send_signal(19);  // SIGSTOP
        count(C_HELD);
    }
    return 0;
}

// argv lives in the caller's memory until exec replaces it: read it at syscall entry
// (user memory, not a kernel struct). Failed execs also emit; user space keeps the last
// EV_ARGS of a thread and pairs it with that thread's EV_EXEC.
static __always_inline int emit_args(const char *const *argv) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    struct proc_state *ps = procs.lookup(&tgid);
    if (!ps)
        return 0;
    u32 zero = 0;
    struct args_event *e = args_scratch.lookup(&zero);
    if (!e)
        return 0;
    fill(&e->h, EV_ARGS, ps->key, tgid);
    e->h.ppid = (u32)id;
    u32 off = 0;
    int argc = 0;
#pragma unroll
    for (int i = 0; i < ARGS_MAX; i++) {
        const char *p = NULL;
        if (bpf_probe_read_user(&p, sizeof(p), &argv[i]) != 0 || !p)
            goto done;
        if (off > ARGBUF_LEN) {
            e->h.flags |= F_TRUNCATED;
            goto done;
        }
        long n = bpf_probe_read_user_str(&e->data[off], ARG_MAX_LEN, p);
        if (n <= 0)
            goto done;
        if (n == ARG_MAX_LEN)
            e->h.flags |= F_TRUNCATED;
        off += n;
        argc++;
    }
    {
        const char *p = NULL;
        if (bpf_probe_read_user(&p, sizeof(p), &argv[ARGS_MAX]) == 0 && p)
            e->h.flags |= F_TRUNCATED;
    }
done:
    if (e->h.flags & F_TRUNCATED)
        count(C_ARGV_TRUNCATED);
    e->h.code = argc;
    e->h.len = off;
    u32 size = (sizeof(struct event) + off) & (ARGS_EVENT_SIZE - 1);
    if (events.ringbuf_output(e, size, 0) != 0)
        count(C_RINGBUF_LOST);
    else
        count(C_EMITTED);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve) {
    return emit_args(args->argv);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat) {
    return emit_args(args->argv);
}

TRACEPOINT_PROBE(sched, sched_process_exec) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct proc_state *ps = procs.lookup(&tgid);
    if (!ps)
        return 0;
    // Its own mm from now on; rss_stat resets the sizes when it sees the new mm_id.
    ps->flags &= ~F_SHARED_MM;
    struct exec_event *e = events.ringbuf_reserve(sizeof(struct exec_event));
    if (!e) {
        count(C_RINGBUF_LOST);
        return 0;
    }
    fill(&e->h, EV_EXEC, ps->key, tgid);
    e->h.ppid = args->old_pid;
    unsigned short loc = args->data_loc_filename & 0xFFFF;
    long n = bpf_probe_read_kernel_str(e->data, sizeof(e->data), (void *)args + loc);
    e->h.len = n > 0 ? n : 0;
    events.ringbuf_submit(e, 0);
    count(C_EMITTED);
    return 0;
}

// sched_process_exit carries no exit code on this kernel: the code comes from
// exit_group(2)'s argument, a death by signal from the last fatal signal generated for
// the process (cleared again when a handler catches it).
TRACEPOINT_PROBE(syscalls, sys_enter_exit_group) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct proc_state *ps = procs.lookup(&tgid);
    if (!ps)
        return 0;
    ps->exit_code = args->error_code & 0xff;
    ps->flags |= F_EXIT_CODE;
    return 0;
}

TRACEPOINT_PROBE(signal, signal_generate) {
    // result 0: delivered, 4: delivered without siginfo
    if (args->result != 0 && args->result != 4)
        return 0;
    int sig = args->sig;
    if (sig < 1 || sig > 64)
        return 0;
    if (sig < 32 && !((FATAL_MASK >> sig) & 1))
        return 0;
    u32 pid = args->pid;
    struct proc_state *ps = procs.lookup(&pid);
    if (!ps)
        return 0;
    ps->signal = sig;
    ps->flags |= F_EXIT_SIGNAL;
    return 0;
}

TRACEPOINT_PROBE(signal, signal_deliver) {
    // A handled or ignored signal does not end the process: forget it.
    if (args->sa_handler == 0)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct proc_state *ps = procs.lookup(&tgid);
    if (ps && ps->signal == args->sig)
        ps->flags &= ~F_EXIT_SIGNAL;
    return 0;
}

#ifdef TRACK_USAGE
// Defined by default (EbpfSource(usage=False) leaves it out): the two programs below run
// on every context switch and every RSS counter change of the whole host.

// CPU time, prev side: sched_switch runs in the context of `prev` (the task leaving the
// CPU), so the current tgid is the one to charge, with the time since this CPU's last
// switch. Chosen over sched_stat_runtime, which fires several times per switch and on
// every clock_gettime(CLOCK_*_CPUTIME_ID) or /proc/<pid>/schedstat read (a loop reading
// its own CPU clock fired it ~1M times in 1.3 s), sometimes from another CPU's context.
// The switch-in stamp must be written for every task, so unwatched tasks cost a clock
// read and a per-CPU store before the map lookup that drops them.
// A raw tracepoint: it needs none of the arguments (only helpers), and skips the
// formatted record a classic tracepoint builds on every one of the host's switches.
RAW_TRACEPOINT_PROBE(sched_switch) {
    u64 now = bpf_ktime_get_ns();
    u32 zero = 0;
    u64 *since = switch_in.lookup(&zero);
    if (!since)
        return 0;
    u64 start = *since;
    *since = now;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct proc_state *ps = procs.lookup(&tgid);
    if (!ps || !start)
        return 0;
    // Threads of one process switch on several CPUs at once.
    __sync_fetch_and_add(&ps->cpu_ns, now - start);
    return 0;
}

// Peak RSS: rss_stat reports the absolute size of one counter of an mm each time it
// changes. `curr` says the mm is the current task's, so the current tgid owns it; other
// contexts (reclaim, exit_mmap after exit_mm, exec's argument copy) are skipped, and the
// next event of the same member in the process's own context corrects its size.
TRACEPOINT_PROBE(kmem, rss_stat) {
    if (!args->curr)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct proc_state *ps = procs.lookup(&tgid);
    if (!ps || (ps->flags & F_SHARED_MM))
        return 0;
    u32 member = args->member;
    if (member >= MM_MEMBERS)
        return 0;
    u32 mm_id = args->mm_id;
    if (ps->mm_id != mm_id) {
        // A new mm (exec): its counters start from zero. 0 = sizes seeded from /proc by
        // watch() or a fresh child: keep them.
        if (ps->mm_id != 0) {
            ps->rss[0] = 0;
            ps->rss[1] = 0;
            ps->rss[2] = 0;
            ps->rss[3] = 0;
        }
        ps->mm_id = mm_id;
    }
    ps->rss[member & (MM_MEMBERS - 1)] = args->size;
    s64 resident = ps->rss[MM_FILEPAGES] + ps->rss[MM_ANONPAGES] + ps->rss[MM_SHMEMPAGES];
    if (resident > ps->peak_rss)
        ps->peak_rss = resident;
    return 0;
}
#endif  // TRACK_USAGE

TRACEPOINT_PROBE(sched, sched_process_exit) {
#ifdef HAVE_GROUP_DEAD
    if (!args->group_dead)
        return 0;  // a thread, not the last one of its process
#else
    // Kernels before group_dead (6.1): the leader's exit stands for the process's. A
    // leader that calls pthread_exit() while other threads go on ends the process early.
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if ((u32)pid_tgid != (u32)(pid_tgid >> 32))
        return 0;
#endif
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct proc_state *ps = procs.lookup(&tgid);
    if (!ps)
        return 0;
    u64 key = ps->key;
    // The last thread's final slice: since its switch-in until now (what follows, the
    // teardown after this tracepoint, is not counted: microseconds).
    u64 cpu_ns = ps->cpu_ns;
    s64 peak_rss = ps->peak_rss;
    u32 usage_flags = 0;
#ifdef TRACK_USAGE
    u32 zero = 0;
    u64 *since = switch_in.lookup(&zero);
    if (since && *since) {
        u64 now = bpf_ktime_get_ns();
        if (now > *since)
            cpu_ns += now - *since;
    }
    usage_flags = F_CPU | (peak_rss > 0 ? F_RSS : 0);
#endif
    u32 flags = ps->flags & (F_EXIT_CODE | F_EXIT_SIGNAL);
    s32 code = 0;
    if (flags & F_EXIT_CODE) {
        flags = F_EXIT_CODE;
        code = ps->exit_code;
    } else if (flags & F_EXIT_SIGNAL) {
        code = ps->signal;
    }
    procs.delete(&tgid);
    held.delete(&tgid);  // never placed: its pid must not stop a later process
    struct exit_event *e = events.ringbuf_reserve(sizeof(struct exit_event));
    if (!e) {
        count(C_RINGBUF_LOST);
        return 0;
    }
    fill(&e->h, EV_EXIT, key, tgid);
    e->h.flags = flags | usage_flags;
    e->h.code = code;
    e->h.len = sizeof(*e) - sizeof(e->h);
    e->cpu_ns = cpu_ns;
    e->peak_rss = peak_rss;
    events.ringbuf_submit(e, 0);
    count(C_EMITTED);
    return 0;
}
