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
//
// With -DGUARD (docs/enforcement.md) the same programs enforce per tool call bounds in
// the kernel: the sum of its processes' anonymous + shmem memory against its limit and
// its session's budget (rss_stat), its process count and fork rate (sched_process_fork);
// on crossing they report through the ring buffer and, by policy, stop the offender with
// bpf_send_signal() before it returns to user space. oom:mark_victim is attributed too.

#define CLONE_VM_FLAG 0x00000100ULL
#define CLONE_THREAD_FLAG 0x00010000ULL

// Values of the `threads` map: what task_newtask learnt about a clone.
#define NEW_THREAD 1
#define NEW_SHARED_MM 2  // CLONE_VM without CLONE_THREAD: vfork, posix_spawn

#define EV_FORK 1
#define EV_EXEC 2
#define EV_EXIT 3
#define EV_ARGS 4
#define EV_GUARD 5  // a guard tripped (struct guard_event)
#define EV_OOM 6    // the OOM killer chose a watched process (struct guard_event)

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
#define C_RUNQ_FULL 5  // RUNQ_LATENCY: a histogram or pending-wakeup map was full
#define N_COUNTERS 6

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
    s64 charged;   // GUARD: anon + shmem bytes this process added to its tool call's sum
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
#ifdef GUARD
// Why a guard tripped (bits of guard_limit.tripped and guard_event.reason).
#define G_MEMORY 1       // the tool call's sum over its limit
#define G_SESSION 2      // the session's sum over its budget
#define G_FORK_RATE 4    // forks faster than the token bucket allows
#define G_PROCESSES 8    // more live processes than allowed
#define G_PIDS_MAX 16    // forks refused with EAGAIN: it sits at its pids.max
#define G_NODE 32        // the node's sum over the node budget of the tool call's class
#define G_FORK_MASK (G_FORK_RATE | G_PROCESSES | G_PIDS_MAX)
#define EAGAIN_NR 11
// guard_limit.flags: what the kernel does on crossing, besides reporting.
#define GF_STOP_MEMORY 1 // SIGSTOP the process whose allocation crossed
#define GF_STOP_FORK 2   // SIGSTOP every process of the tool call that forks or execs
#define GF_KILL_FORK 4   // SIGKILL them instead
#define GF_CLASS_SHIFT 8 // bits 8-9: the priority class (node_budget index)
#define SIGKILL_NR 9
#define SIGSTOP_NR 19

// Written by the daemon only; the kernel only ORs bits into `tripped` (the daemon
// clears them by rewriting the entry when it has decided).
struct guard_limit {
    s64 memory;        // bytes of anon + shmem, 0 = unbounded
    u64 session;       // key into session_budget / session_used, 0 = none
    u64 fork_cost_ns;  // 1e9 / allowed forks per second, 0 = no rate bound
    u64 fork_burst_ns; // burst * fork_cost_ns: how far ahead of the rate a burst may run
    u32 max_procs;     // live processes, 0 = unbounded
    u32 flags;         // GF_*
    u64 refused_max;   // forks refused with EAGAIN before G_PIDS_MAX trips, 0 = never
    u64 tripped;       // G_* not yet resolved by the daemon (64 bits: BPF atomics)
};

// Written by the kernel only (the daemon creates it zeroed and deletes it).
struct guard_state {
    s64 memory;  // sum of its live processes' `charged`
    s64 peak;    // max of `memory`
    u64 tat;     // fork GCRA: theoretical arrival time of the next fork (ktime ns)
    s64 procs;   // live processes (not threads)
    u64 forks;
    u64 signals; // stop/kill signals the guard sent
    u64 refused; // forks that failed with EAGAIN (pids.max)
};

// EV_GUARD and EV_OOM: the header, then the figures.
struct guard_event {
    struct event h;
    s64 value;          // memory: tool call sum; OOM: victim's rss (bytes); fork: forks/s
    s64 limit;          // the bound crossed (bytes, forks/s or processes)
    s64 session_value;
    s64 session_limit;
    s64 procs;
    u32 reason;         // G_*
    u32 action;         // signal sent (0: reported only)
    u64 crossed_ns;     // bpf_ktime_get_boot_ns() when the bound was found crossed, before
                        // the signal (h.ts is taken after it): the reaction, in the kernel
};

BPF_HASH(guard_limits, u64, struct guard_limit, MAX_GUARDS);
BPF_HASH(guard_state, u64, struct guard_state, MAX_GUARDS);
BPF_HASH(session_budget, u64, s64, MAX_GUARDS);  // daemon: the session's bytes
BPF_HASH(session_used, u64, s64, MAX_GUARDS);    // kernel: sum of its tool calls
// The node: the sum over every guarded tool call (kernel), and per priority class the
// sum over which a tool call of that class is stopped (daemon; 0 = never).
BPF_ARRAY(node_used, s64, 1);
BPF_ARRAY(node_budget, s64, 4);
// The node's turn, first come first served: above [0] bytes of the node's sum (daemon;
// 0 = off) only one tool call of a stoppable class may grow, the one whose key is in
// [1] (taken by the kernel for the first that grows past [0], given back by the daemon
// when its burst is over). Any other is stopped at its next page, holding what it
// held: two bursts that do not fit together never both stop halfway.
BPF_ARRAY(node_turn, s64, 2);
#endif

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

#ifdef GUARD
static __always_inline void guard_emit(u32 type, u64 key, u32 pid, s64 value, s64 limit,
                                       s64 session_value, s64 session_limit, s64 procs,
                                       u32 reason, u32 action, u64 crossed_ns) {
    struct guard_event *e = events.ringbuf_reserve(sizeof(struct guard_event));
    if (!e) {
        count(C_RINGBUF_LOST);
        return;
    }
    fill(&e->h, type, key, pid);
    e->h.len = sizeof(*e) - sizeof(e->h);
    e->value = value;
    e->limit = limit;
    e->session_value = session_value;
    e->session_limit = session_limit;
    e->procs = procs;
    e->reason = reason;
    e->action = action;
    e->crossed_ns = crossed_ns;
    events.ringbuf_submit(e, 0);
    count(C_EMITTED);
}

static __always_inline u32 guard_fork_signal(struct guard_limit *lim) {
    if (lim->flags & GF_KILL_FORK)
        return SIGKILL_NR;
    if (lim->flags & GF_STOP_FORK)
        return SIGSTOP_NR;
    return 0;
}

// A process's anon + shmem became `now_bytes` (rss_stat, in its own context). Its
// contribution to the tool call's and the session's sums moves by the difference; an
// exchange, because threads of one process report the same mm's counters concurrently.
// On crossing, the allocating process is stopped before it returns to user space: the
// signal is raised here, inside the page fault that crossed.
static __always_inline void guard_memory(struct proc_state *ps, u32 tgid, s64 now_bytes) {
    u64 key = ps->key;
    struct guard_limit *lim = guard_limits.lookup(&key);
    if (!lim)
        return;
    struct guard_state *st = guard_state.lookup(&key);
    if (!st)
        return;
    s64 old = __sync_lock_test_and_set(&ps->charged, now_bytes);
    s64 delta = now_bytes - old;
    if (delta == 0)
        return;
    s64 sum = __sync_fetch_and_add(&st->memory, delta) + delta;
    if (sum > st->peak)
        st->peak = sum;
    s64 session_sum = 0;
    s64 budget = 0;
    u64 skey = lim->session;
    if (skey) {
        s64 *used = session_used.lookup(&skey);
        if (used)
            session_sum = __sync_fetch_and_add(used, delta) + delta;
        s64 *b = session_budget.lookup(&skey);
        if (b)
            budget = *b;
    }
    u32 zero = 0;
    s64 node_sum = 0;
    s64 *node = node_used.lookup(&zero);
    if (node)
        node_sum = __sync_fetch_and_add(node, delta) + delta;
    if (delta < 0)
        return;
    u32 reason = 0;
    if (lim->memory > 0 && sum > lim->memory)
        reason |= G_MEMORY;
    if (budget > 0 && session_sum > budget)
        reason |= G_SESSION;
    u32 cls = (lim->flags >> GF_CLASS_SHIFT) & 3;
    s64 *node_max = node_budget.lookup(&cls);
    if (node_max && *node_max > 0) {
        if (node_sum > *node_max)
            reason |= G_NODE;
        u32 soft_at = 0, owner_at = 1;
        s64 *soft = node_turn.lookup(&soft_at);
        s64 *owner = node_turn.lookup(&owner_at);
        if (soft && owner && *soft > 0 && node_sum > *soft) {
            s64 was = __sync_val_compare_and_swap(owner, 0, (s64)key);
            if (was != 0 && was != (s64)key)
                reason |= G_NODE;  // another tool call's turn
        }
    }
    if (!reason)
        return;
    u64 crossed_ns = bpf_ktime_get_boot_ns();
    u32 action = 0;
    if (lim->flags & GF_STOP_MEMORY) {
        bpf_send_signal(SIGSTOP_NR);
        action = SIGSTOP_NR;
        __sync_fetch_and_add(&st->signals, 1);
    }
    u64 before = __sync_fetch_and_or(&lim->tripped, (u64)reason);
    if ((before & reason) == reason)
        return;  // reported already; the daemon is deciding
    guard_emit(EV_GUARD, key, tgid, sum, lim->memory, session_sum, budget, st->procs, reason,
               action, crossed_ns);
}

// A watched process forked a process (not a thread); runs in the parent.
static __always_inline void guard_fork(u64 key, u32 ptgid) {
    struct guard_limit *lim = guard_limits.lookup(&key);
    if (!lim)
        return;
    struct guard_state *st = guard_state.lookup(&key);
    if (!st)
        return;
    s64 procs = __sync_fetch_and_add(&st->procs, 1) + 1;
    u64 forks = __sync_fetch_and_add(&st->forks, 1) + 1;
    u32 reason = 0;
    if (lim->max_procs && procs > lim->max_procs)
        reason |= G_PROCESSES;
    if (lim->fork_cost_ns) {
        // GCRA (a token bucket in one word): each fork moves the theoretical arrival
        // time one cost ahead; running more than the burst ahead of now is over the rate.
        u64 now = bpf_ktime_get_ns();
        u64 tat = st->tat;
        if (tat < now)
            tat = now;
        tat += lim->fork_cost_ns;
        st->tat = tat;
        if (tat - now > lim->fork_burst_ns)
            reason |= G_FORK_RATE;
    }
    if (!reason && !(lim->tripped & G_FORK_MASK))
        return;
    u64 crossed_ns = bpf_ktime_get_boot_ns();
    u32 sig = guard_fork_signal(lim);
    if (sig) {
        bpf_send_signal(sig);
        __sync_fetch_and_add(&st->signals, 1);
    }
    if (!reason)
        return;
    u64 before = __sync_fetch_and_or(&lim->tripped, (u64)reason);
    if ((before & reason) == reason)
        return;
    guard_emit(EV_GUARD, key, ptgid, forks, lim->max_procs, 0, 0, procs, reason, sig, crossed_ns);
}

// A fork of a watched process failed. EAGAIN means the pids controller (or
// RLIMIT_NPROC) refused it: a fork loop too slow for the rate bound ends there and would
// spin at pids.max for ever, invisible to sched_process_fork. Past `refused_max`
// refusals the tool call trips (a program that handles EAGAIN may probe its limit a few
// times); once tripped, every refused forker is halted too.
static __always_inline int guard_fork_failed(long ret) {
    if (ret != -EAGAIN_NR)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct proc_state *ps = procs.lookup(&tgid);
    if (!ps)
        return 0;
    u64 key = ps->key;
    struct guard_limit *lim = guard_limits.lookup(&key);
    if (!lim)
        return 0;
    struct guard_state *st = guard_state.lookup(&key);
    if (!st)
        return 0;
    u64 refused = __sync_fetch_and_add(&st->refused, 1) + 1;
    if (!(lim->tripped & G_FORK_MASK) && (!lim->refused_max || refused <= lim->refused_max))
        return 0;
    u64 crossed_ns = bpf_ktime_get_boot_ns();
    u32 sig = guard_fork_signal(lim);
    if (sig) {
        bpf_send_signal(sig);
        __sync_fetch_and_add(&st->signals, 1);
    }
    u64 before = __sync_fetch_and_or(&lim->tripped, (u64)G_PIDS_MAX);
    if (before & G_PIDS_MAX)
        return 0;
    guard_emit(EV_GUARD, key, tgid, refused, 0, 0, 0, st->procs, G_PIDS_MAX, sig, crossed_ns);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_clone) {
    return guard_fork_failed(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_clone3) {
    return guard_fork_failed(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_fork) {
    return guard_fork_failed(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_vfork) {
    return guard_fork_failed(args->ret);
}

// Once a tool call's fork guard tripped, any of its processes that execs is halted too.
static __always_inline void guard_halt_if_tripped(u64 key) {
    struct guard_limit *lim = guard_limits.lookup(&key);
    if (!lim || !(lim->tripped & G_FORK_MASK))
        return;
    u32 sig = guard_fork_signal(lim);
    if (sig)
        bpf_send_signal(sig);
}

// A process leaves: its contribution leaves the sums.
static __always_inline void guard_exit(struct proc_state *ps) {
    u64 key = ps->key;
    struct guard_state *st = guard_state.lookup(&key);
    if (!st)
        return;
    __sync_fetch_and_add(&st->procs, -1);
    s64 charged = ps->charged;
    if (!charged)
        return;
    __sync_fetch_and_add(&st->memory, -charged);
    u32 zero = 0;
    s64 *node = node_used.lookup(&zero);
    if (node)
        __sync_fetch_and_add(node, -charged);
    struct guard_limit *lim = guard_limits.lookup(&key);
    if (!lim || !lim->session)
        return;
    u64 skey = lim->session;
    s64 *used = session_used.lookup(&skey);
    if (used)
        __sync_fetch_and_add(used, -charged);
}

// The OOM killer chose its victim (in the context of the task whose allocation failed).
// Only the pid is read for attribution; the victim's comm and sizes where the kernel's
// format has them (6.8+; 6.1 has only the pid).
TRACEPOINT_PROBE(oom, mark_victim) {
    u32 pid = args->pid;
    struct proc_state *ps = procs.lookup(&pid);
    if (!ps)
        return 0;
    u64 key = ps->key;
    struct guard_event *e = events.ringbuf_reserve(sizeof(struct guard_event));
    if (!e) {
        count(C_RINGBUF_LOST);
        return 0;
    }
    fill(&e->h, EV_OOM, key, pid);
    e->h.ppid = bpf_get_current_pid_tgid() >> 32;  // whose allocation failed
    e->h.len = sizeof(*e) - sizeof(e->h);
    e->value = 0;
    e->limit = 0;
    e->session_value = 0;
    e->session_limit = 0;
    e->procs = 0;
    e->reason = 0;
    e->action = SIGKILL_NR;
    e->crossed_ns = e->h.ts;
#ifdef OOM_HAS_RSS
    unsigned short loc = args->data_loc_comm & 0xFFFF;
    bpf_probe_read_kernel_str(e->h.comm, sizeof(e->h.comm), (void *)args + loc);
    e->value = (s64)(args->anon_rss + args->file_rss + args->shmem_rss) * 1024;
#else
    __builtin_memset(e->h.comm, 0, sizeof(e->h.comm));
#endif
    struct guard_limit *lim = guard_limits.lookup(&key);
    if (lim)
        e->limit = lim->memory;
    struct guard_state *st = guard_state.lookup(&key);
    if (st) {
        e->session_value = st->memory;
        e->procs = st->procs;
    }
    events.ringbuf_submit(e, 0);
    count(C_EMITTED);
    return 0;
}
#endif  // GUARD

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
#ifdef GUARD
    guard_fork(key, ptgid);
#endif
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
#ifdef GUARD
    guard_halt_if_tripped(ps->key);
#endif
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

#endif  // TRACK_USAGE

#if defined(TRACK_USAGE) || defined(GUARD)
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
#ifdef GUARD
    // Private memory only: file pages are shared page cache (libraries), which a sum of
    // RSS would count once per process; the cgroup charges them once.
    guard_memory(ps, tgid, ps->rss[MM_ANONPAGES] + ps->rss[MM_SHMEMPAGES]);
#endif
    return 0;
}
#endif  // TRACK_USAGE || GUARD

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
#ifdef GUARD
    guard_exit(ps);
#endif
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

#ifdef RUNQ_LATENCY
// Run-queue latency per tool call (docs/runqlat.md): the time a watched task waits
// runnable, from its wake-up (or its preemption) until a CPU switches to it, in a log2
// histogram with 4 sub-buckets per power of two, keyed by its tool call's key.
//
// Raw tracepoints, attached by user space only while the collector wants them
// (agentd/metrics/runqlat.py). Their arguments are task_struct pointers, which this
// program never dereferences (struct layouts may not match, see the top of this file):
// a pointer is only an opaque identity. Who a pointer is comes from the task's own
// context: when a watched task switches out, `current` is that task, so its tgid (a
// helper) and its pointer (the raw argument) meet there; a task can only be woken after
// it has switched out once. A new task's first wait is attributed at wake_up_new_task,
// which runs in its parent's context (the parent's key is what the child inherits).
// Unwatched tasks cost one hash lookup per wake-up and two per context switch.
#define RUNQ_SUB_BITS 2
#define RUNQ_SLOTS 256

struct runq_pending {
    u64 ts;   // bpf_ktime_get_ns() when it became runnable
    u64 key;  // its tool call
};

struct runq_slot {
    u64 key;
    u64 slot; // RUNQ_SUB_BITS sub-buckets per power of two of nanoseconds
};

struct runq_total {
    u64 count;
    u64 sum_ns;
};

// task pointer -> tgid, learnt at the task's own switch-outs; LRU: a task that exited
// unseen by runq_exit cannot leak an entry.
BPF_TABLE("lru_hash", u64, u32, runq_task, RUNQ_TASKS);
// task pointer -> since when it waits, for the switch that picks it. A plain
// (preallocated) hash: an LRU update cost ~3x more per wake-up; every entry is consumed
// at the task's next switch-in or its exit, and user space clears the map at detach.
BPF_HASH(runq_start, u64, struct runq_pending, RUNQ_TASKS);
BPF_HASH(runq_hist, struct runq_slot, u64, RUNQ_HIST_ENTRIES);
BPF_HASH(runq_totals, u64, struct runq_total, RUNQ_KEYS);

static __always_inline void runq_enqueue(u64 task, u64 key) {
    struct runq_pending p = {};
    p.ts = bpf_ktime_get_ns();
    p.key = key;
    runq_start.update(&task, &p);
}

static __always_inline u64 runq_slot_of(u64 delta) {
    if (delta < (1 << RUNQ_SUB_BITS))
        return delta;
    u64 log = bpf_log2l(delta);
    u64 sub = (delta >> (log - RUNQ_SUB_BITS)) & ((1 << RUNQ_SUB_BITS) - 1);
    u64 slot = (log << RUNQ_SUB_BITS) | sub;
    return slot < RUNQ_SLOTS ? slot : RUNQ_SLOTS - 1;
}

static __always_inline void runq_record(u64 key, u64 delta) {
    struct runq_slot s = {};
    s.key = key;
    s.slot = runq_slot_of(delta);
    u64 zero = 0;
    u64 *n = runq_hist.lookup_or_try_init(&s, &zero);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        count(C_RUNQ_FULL);
    struct runq_total z = {};
    struct runq_total *t = runq_totals.lookup_or_try_init(&key, &z);
    if (t) {
        __sync_fetch_and_add(&t->count, 1);
        __sync_fetch_and_add(&t->sum_ns, delta);
    }
}

// sched_wakeup and sched_wakeup_new(struct task_struct *p)
int runq_wakeup(struct bpf_raw_tracepoint_args *ctx) {
    u64 task = ctx->args[0];
    u32 *tgid = runq_task.lookup(&task);
    if (!tgid)
        return 0;
    u32 t = *tgid;
    struct proc_state *ps = procs.lookup(&t);
    if (ps)
        runq_enqueue(task, ps->key);
    return 0;
}

int runq_wakeup_new(struct bpf_raw_tracepoint_args *ctx) {
    u32 parent = bpf_get_current_pid_tgid() >> 32;  // wake_up_new_task runs in the parent
    struct proc_state *ps = procs.lookup(&parent);
    if (ps)
        runq_enqueue(ctx->args[0], ps->key);
    return 0;
}

// sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
//              unsigned int prev_state), in prev's context.
int runq_switch(struct bpf_raw_tracepoint_args *ctx) {
    u64 next = ctx->args[2];
    struct runq_pending *p = runq_start.lookup(&next);
    if (p) {
        u64 now = bpf_ktime_get_ns();
        u64 ts = p->ts;
        u64 key = p->key;
        runq_start.delete(&next);
        if (now > ts)
            runq_record(key, now - ts);
    }
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct proc_state *ps = procs.lookup(&tgid);
    if (!ps)
        return 0;
    u64 prev = ctx->args[1];
    u32 *known = runq_task.lookup(&prev);
    if (!known || *known != tgid)
        runq_task.update(&prev, &tgid);
    // Preempted, or yielding while runnable: it waits on the run queue from now on,
    // without a wake-up. TASK_RUNNING is 0.
    if (ctx->args[0] || (u32)ctx->args[3] == 0)
        runq_enqueue(prev, ps->key);
    return 0;
}

// sched_process_exit(struct task_struct *p, ...): the pointer may be reused by any task.
int runq_exit(struct bpf_raw_tracepoint_args *ctx) {
    u64 task = ctx->args[0];
    runq_task.delete(&task);
    runq_start.delete(&task);
    return 0;
}
#endif  // RUNQ_LATENCY
