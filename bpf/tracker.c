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

#define CLONE_THREAD_FLAG 0x00010000ULL

#define EV_FORK 1
#define EV_EXEC 2
#define EV_EXIT 3
#define EV_ARGS 4

#define F_EXIT_CODE 1
#define F_EXIT_SIGNAL 2
#define F_TRUNCATED 4

#define C_RINGBUF_LOST 0
#define C_MAP_FULL 1
#define C_ARGV_TRUNCATED 2
#define C_EMITTED 3
#define N_COUNTERS 4

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
    s32 exit_code; // from exit_group(2), valid with F_EXIT_CODE
    s32 signal;    // last fatal signal generated for it, valid with F_EXIT_SIGNAL
    u32 flags;
    u32 pad;
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
BPF_PERCPU_ARRAY(counters, u64, N_COUNTERS);
BPF_PERCPU_ARRAY(args_scratch, struct args_event, 1);

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
    if (!(args->clone_flags & CLONE_THREAD_FLAG))
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!procs.lookup(&tgid))
        return 0;
    u32 tid = args->pid;
    u8 one = 1;
    threads.update(&tid, &one);
    return 0;
}

// Fires in the parent, after copy_process() and before the child is first woken up.
TRACEPOINT_PROBE(sched, sched_process_fork) {
    u32 ptgid = bpf_get_current_pid_tgid() >> 32;
    struct proc_state *ps = procs.lookup(&ptgid);
    if (!ps)
        return 0;
    u32 child = args->child_pid;
    if (threads.lookup(&child)) {
        threads.delete(&child);  // a thread: its process is already watched
        return 0;
    }
    u64 key = ps->key;
    struct proc_state cs = {};
    cs.key = key;
    if (procs.update(&child, &cs) != 0)
        count(C_MAP_FULL);
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

TRACEPOINT_PROBE(sched, sched_process_exit) {
    if (!args->group_dead)
        return 0;  // a thread, not the last one of its process
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct proc_state *ps = procs.lookup(&tgid);
    if (!ps)
        return 0;
    u64 key = ps->key;
    u32 flags = ps->flags & (F_EXIT_CODE | F_EXIT_SIGNAL);
    s32 code = 0;
    if (flags & F_EXIT_CODE) {
        flags = F_EXIT_CODE;
        code = ps->exit_code;
    } else if (flags & F_EXIT_SIGNAL) {
        code = ps->signal;
    }
    procs.delete(&tgid);
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    if (!e) {
        count(C_RINGBUF_LOST);
        return 0;
    }
    fill(e, EV_EXIT, key, tgid);
    e->flags = flags;
    e->code = code;
    events.ringbuf_submit(e, 0);
    count(C_EMITTED);
    return 0;
}
