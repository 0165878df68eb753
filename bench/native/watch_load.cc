// Native (C++ gRPC) event watchers for bench/api_load.py: STREAMS server-streaming
// calls of one method over one channel, so that the daemon's fan-out, not a Python
// client reading 2,000 messages/s, is what the bench's CPU figures show.
//
// Every stream sends the same pre-serialized request (made by the bench, with the
// resume token GetNodeState gave it, so no event is missed whenever a stream starts)
// with a generic stub: no generated code, so no protoc step. One thread drives every
// stream on one completion queue.
//
// usage: watch_load ADDRESS CA CERT KEY METHOD REQUEST_FILE STREAMS OUT_FILE
// Prints "ready" once every stream has sent its request or ended (the server sends
// no headers before its first event, so that is the earliest sign of a started
// stream; the resume token makes the moment irrelevant to what a stream receives).
// Reads stdin until it closes, then cancels the streams, writes OUT_FILE and prints
// "streams messages cpu_seconds" (cpu: from "ready" to stdin closing).
// OUT_FILE, per stream in order, native-endian uint32s: status code, length of the
// status message, the message, the number of messages received, then each message
// as its length and its bytes. A stream cancelled by the stop has status CANCELLED
// (1); any other non-OK status ended it early.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common.h"

namespace {

// One stream's calls run in sequence (start, send the request and half-close, read
// until the end, finish), so its single tag and `step` say which one completed.
enum class Step { kStart, kSend, kRead, kFinish, kDone };

struct Stream {
  grpc::ClientContext context;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call;
  grpc::ByteBuffer response;
  grpc::Status status;
  Step step = Step::kStart;
  std::vector<std::string> messages;
};

void put_u32(std::ofstream& out, size_t value) {
  const uint32_t v = static_cast<uint32_t>(value);
  out.write(reinterpret_cast<const char*>(&v), sizeof v);
}

void put_bytes(std::ofstream& out, const std::string& bytes) {
  put_u32(out, bytes.size());
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 9) {
    std::fprintf(stderr, "usage: %s ADDRESS CA CERT KEY METHOD REQUEST_FILE STREAMS OUT_FILE\n",
                 argv[0]);
    return 2;
  }
  const std::string address = argv[1], method = argv[5], out_path = argv[8];
  const int count = std::stoi(argv[7]);
  if (count < 1) {
    std::fprintf(stderr, "watch_load: STREAMS must be at least 1\n");
    return 2;
  }
  const grpc::ByteBuffer request = bench::buffer_of(bench::slurp(argv[6]));
  auto channel =
      grpc::CreateChannel(address, bench::tls_credentials(argv[2], argv[3], argv[4]));
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    std::fprintf(stderr, "watch_load: cannot connect to %s\n", address.c_str());
    return 1;
  }
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  std::vector<Stream> streams(count);
  for (auto& s : streams) {
    s.call = stub.PrepareCall(&s.context, method, &cq);
    s.call->StartCall(&s);
  }

  // The stop: stdin closing (the bench closes it, or it exited) cancels every stream.
  std::atomic<double> cpu_at_stop{0};
  std::thread stopper([&] {
    char sink[256];
    while (read(STDIN_FILENO, sink, sizeof sink) > 0) {
    }
    cpu_at_stop = bench::cpu_seconds();
    for (auto& s : streams) s.context.TryCancel();
  });

  int settled = 0;  // streams that sent their request, or ended
  int active = count;
  double cpu_at_ready = 0;
  auto settle = [&] {
    if (++settled == count) {
      cpu_at_ready = bench::cpu_seconds();
      std::printf("ready\n");
      std::fflush(stdout);
    }
  };
  while (active > 0) {
    void* tag = nullptr;
    bool ok = false;
    if (!cq.Next(&tag, &ok)) break;
    Stream& s = *static_cast<Stream*>(tag);
    switch (s.step) {
      case Step::kStart:
        if (ok) {
          s.step = Step::kSend;
          s.call->WriteLast(request, grpc::WriteOptions(), &s);
          break;
        }
        settle();  // never started: its status says why
        s.step = Step::kFinish;
        s.call->Finish(&s.status, &s);
        break;
      case Step::kSend:
        settle();
        s.step = ok ? Step::kRead : Step::kFinish;
        if (ok) {
          s.call->Read(&s.response, &s);
        } else {
          s.call->Finish(&s.status, &s);
        }
        break;
      case Step::kRead:
        if (ok) {
          s.messages.push_back(bench::bytes_of(s.response));
          s.call->Read(&s.response, &s);
        } else {  // the stream ended: its status says how
          s.step = Step::kFinish;
          s.call->Finish(&s.status, &s);
        }
        break;
      case Step::kFinish:
        s.step = Step::kDone;
        --active;
        break;
      case Step::kDone:
        break;
    }
  }
  stopper.join();  // every stream ended early: still wait for the stop
  cq.Shutdown();
  {
    void* tag = nullptr;
    bool ok = false;
    while (cq.Next(&tag, &ok)) {
    }
  }

  std::ofstream out(out_path, std::ios::binary);
  long messages = 0;
  for (auto& s : streams) {
    put_u32(out, static_cast<size_t>(s.status.error_code()));
    put_bytes(out, s.status.error_message());
    put_u32(out, s.messages.size());
    for (const auto& m : s.messages) put_bytes(out, m);
    messages += static_cast<long>(s.messages.size());
  }
  out.close();
  if (!out) {
    std::fprintf(stderr, "watch_load: cannot write %s\n", out_path.c_str());
    return 1;
  }
  std::printf("%d %ld %.6f\n", count, messages, cpu_at_stop - cpu_at_ready);
  return 0;
}
