// A native (C++ gRPC) closed-loop load client for bench/api_load.py: what a
// scheduler's own client (kube-scheduler extenders are Go, others C++/Java) costs,
// so that the daemon, not a Python load generator, is what is measured.
//
// Sends one pre-serialized request (made by the bench from the proto) to one method
// with a generic stub: no generated code, so no protoc step. Every call's status is
// checked (a non-OK status, or an empty response, is an error); the last response is
// written out for the bench to decode and check.
//
// usage: unary_load ADDRESS CA CERT KEY METHOD REQUEST_FILE IN_FLIGHT CONNECTIONS
//                   START_AT_EPOCH SECONDS OUT_PREFIX [RATE]
// writes OUT_PREFIX.lat (a line per successful call: its latency in ms, when it was
// sent or due in ms since the window began, and its connection's index),
// OUT_PREFIX.resp (the last response), and prints "calls errors cpu_seconds" on
// stdout.
//
// Without RATE (or 0): closed loop, IN_FLIGHT calls always in flight (the most the
// server does). With RATE: open loop, RATE calls a second on a fixed schedule,
// whatever the answers do (IN_FLIGHT is not used: each call has its own slot, none
// waits for another), each call's latency timed from when it was due, not from when it was
// sent: a server that falls behind shows it in the latencies instead of slowing the
// load down (no coordinated omission).

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common.h"

namespace {

double epoch_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// One call in flight: its own context, response and status, reused for the next.
struct Slot {
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
  grpc::ByteBuffer response;
  grpc::Status status;
  std::chrono::steady_clock::time_point began;
  int connection = 0;
};

// `due`: when the call was due (open loop), else now.
void start_call(Slot& slot, grpc::GenericStub& stub, const std::string& method,
                const grpc::ByteBuffer& request, grpc::CompletionQueue& cq,
                std::chrono::steady_clock::time_point due = {}) {
  slot.context = std::make_unique<grpc::ClientContext>();
  slot.context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  slot.response.Clear();
  slot.began = due == std::chrono::steady_clock::time_point{} ? std::chrono::steady_clock::now()
                                                                : due;
  slot.reader = stub.PrepareUnaryCall(slot.context.get(), method, request, &cq);
  slot.reader->StartCall();
  slot.reader->Finish(&slot.response, &slot.status, &slot);
}

}  // namespace

struct Outcome {
  std::vector<double> latencies;
  std::vector<double> sent_at;  // ms since the window began, with `latencies`
  std::vector<int> connection;  // with `latencies`
  std::chrono::steady_clock::time_point window_began = std::chrono::steady_clock::now();
  long errors = 0;
  std::string last_response;

  void record(Slot& slot, bool ok) {
    const auto done = std::chrono::steady_clock::now();
    std::string body = ok && slot.status.ok() ? bench::bytes_of(slot.response) : std::string();
    if (body.empty()) {
      ++errors;  // a non-OK status, or no response at all
    } else {
      latencies.push_back(std::chrono::duration<double, std::milli>(done - slot.began).count());
      sent_at.push_back(
          std::chrono::duration<double, std::milli>(slot.began - window_began).count());
      connection.push_back(slot.connection);
      last_response.swap(body);
    }
  }
};

// RATE calls a second for `seconds`, on the schedule whatever happens: one thread
// sends each call when due (sleeping until then: a completion queue's timed wait
// wakes milliseconds late, which would be timed as the server's), this one takes
// the answers. Each call has its own slot, so none waits for a free one.
void open_loop(std::vector<std::unique_ptr<grpc::GenericStub>>& stubs, const std::string& method,
               const grpc::ByteBuffer& request, grpc::CompletionQueue& cq, double rate,
               double seconds, Outcome& outcome) {
  using clock = std::chrono::steady_clock;
  const long total = static_cast<long>(rate * seconds);
  std::vector<std::unique_ptr<Slot>> slots;
  for (long n = 0; n < total; ++n) slots.push_back(std::make_unique<Slot>());
  const auto began = clock::now();
  std::thread sender([&] {
    for (long n = 0; n < total; ++n) {
      const auto due = began + std::chrono::duration_cast<clock::duration>(
                                   std::chrono::duration<double>(n / rate));
      std::this_thread::sleep_until(due);
      Slot& slot = *slots[n];
      slot.connection = static_cast<int>(n % static_cast<long>(stubs.size()));
      start_call(slot, *stubs[slot.connection], method, request, cq, due);
    }
  });
  for (long received = 0; received < total; ++received) {
    void* tag = nullptr;
    bool ok = false;
    if (!cq.Next(&tag, &ok)) break;
    outcome.record(*static_cast<Slot*>(tag), ok);
  }
  sender.join();
}

int main(int argc, char** argv) {
  if (argc != 12 && argc != 13) {
    std::fprintf(stderr,
                 "usage: %s ADDRESS CA CERT KEY METHOD REQUEST_FILE IN_FLIGHT CONNECTIONS "
                 "START_AT SECONDS OUT_PREFIX [RATE]\n",
                 argv[0]);
    return 2;
  }
  const double rate = argc == 13 ? std::stod(argv[12]) : 0.0;
  const std::string address = argv[1], method = argv[5], out = argv[11];
  const int threads = std::stoi(argv[7]), connections = std::stoi(argv[8]);  // threads: in flight
  const double start_at = std::stod(argv[9]), seconds = std::stod(argv[10]);
  const auto credentials = bench::tls_credentials(argv[2], argv[3], argv[4]);
  const grpc::ByteBuffer request = bench::buffer_of(bench::slurp(argv[6]));

  // One HTTP/2 connection per channel (a distinct channel argument keeps grpc from
  // sharing the subchannel), so that SO_REUSEPORT listeners each get some.
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int c = 0; c < connections; ++c) {
    grpc::ChannelArguments args;
    args.SetInt("agentd.bench.connection", c);
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto channel = grpc::CreateCustomChannel(address, credentials, args);
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
      std::fprintf(stderr, "unary_load: cannot connect to %s\n", address.c_str());
      return 1;
    }
    channels.push_back(channel);
  }
  // One thread drives every call in flight on one completion queue (no thread per
  // call: the client must cost the shared cores little).
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  for (auto& channel : channels) stubs.push_back(std::make_unique<grpc::GenericStub>(channel));
  grpc::CompletionQueue cq;
  std::vector<Slot> slots(threads);
  Outcome outcome;
  {  // warm up every connection, outside the window
    for (size_t c = 0; c < stubs.size(); ++c) {
      Slot warm;
      start_call(warm, *stubs[c], method, request, cq);
      void* tag = nullptr;
      bool ok = false;
      cq.Next(&tag, &ok);
    }
  }
  while (epoch_now() < start_at) std::this_thread::sleep_for(std::chrono::microseconds(500));
  const double cpu_began = bench::cpu_seconds();
  outcome.window_began = std::chrono::steady_clock::now();
  if (rate > 0) {
    open_loop(stubs, method, request, cq, rate, seconds, outcome);
  } else {
    const double end = start_at + seconds;
    for (int t = 0; t < threads; ++t) {
      slots[t].connection = t % connections;
      start_call(slots[t], *stubs[slots[t].connection], method, request, cq);
    }
    int in_flight = threads;
    bool stopping = false;
    while (in_flight > 0) {
      void* tag = nullptr;
      bool ok = false;
      if (!cq.Next(&tag, &ok)) break;
      Slot& slot = *static_cast<Slot*>(tag);
      --in_flight;
      outcome.record(slot, ok);
      stopping = stopping || epoch_now() >= end;
      if (!stopping) {
        start_call(slot, *stubs[slot.connection], method, request, cq);
        ++in_flight;
      }
    }
  }
  const double cpu = bench::cpu_seconds() - cpu_began;
  cq.Shutdown();
  {
    void* tag = nullptr;
    bool ok = false;
    while (cq.Next(&tag, &ok)) {
    }
  }
  const long calls = static_cast<long>(outcome.latencies.size());
  std::ofstream lat(out + ".lat");
  for (size_t n = 0; n < outcome.latencies.size(); ++n)
    lat << outcome.latencies[n] << ' ' << outcome.sent_at[n] << ' ' << outcome.connection[n]
        << '\n';
  if (!outcome.last_response.empty())
    std::ofstream(out + ".resp", std::ios::binary) << outcome.last_response;
  std::printf("%ld %ld %.6f\n", calls, outcome.errors, cpu);
  return 0;
}
