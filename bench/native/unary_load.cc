// A native (C++ gRPC) closed-loop load client for bench/api_load.py: what a
// scheduler's own client (kube-scheduler extenders are Go, others C++/Java) costs,
// so that the daemon, not a Python load generator, is what is measured.
//
// Sends one pre-serialized request (made by the bench from the proto) to one method
// with a generic stub: no generated code, so no protoc step. Every call's status is
// checked (a non-OK status, or an empty response, is an error); the last response is
// written out for the bench to decode and check.
//
// usage: unary_load ADDRESS CA CERT KEY METHOD REQUEST_FILE THREADS CONNECTIONS
//                   START_AT_EPOCH SECONDS OUT_PREFIX
// writes OUT_PREFIX.lat (one latency in ms per line), OUT_PREFIX.resp (the last
// response), and prints "calls errors cpu_seconds" on stdout.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

std::string slurp(const char* path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

double epoch_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec +
         u.ru_stime.tv_usec / 1e6;
}

struct Worker {
  std::vector<double> latencies;
  long errors = 0;
  std::string last_response;
};

bool call_once(grpc::GenericStub& stub, const std::string& method, const grpc::ByteBuffer& request,
               grpc::CompletionQueue& cq, std::string* response_bytes) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::ByteBuffer response;
  grpc::Status status;
  auto call = stub.PrepareUnaryCall(&context, method, request, &cq);
  call->StartCall();
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  if (!cq.Next(&tag, &ok) || !ok || !status.ok()) return false;
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return false;
  response_bytes->clear();
  for (const auto& s : slices) response_bytes->append(reinterpret_cast<const char*>(s.begin()), s.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 12) {
    std::fprintf(stderr,
                 "usage: %s ADDRESS CA CERT KEY METHOD REQUEST_FILE THREADS CONNECTIONS "
                 "START_AT SECONDS OUT_PREFIX\n",
                 argv[0]);
    return 2;
  }
  const std::string address = argv[1], method = argv[5], out = argv[11];
  const int threads = std::stoi(argv[7]), connections = std::stoi(argv[8]);
  const double start_at = std::stod(argv[9]), seconds = std::stod(argv[10]);
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = slurp(argv[2]);
  tls.pem_cert_chain = slurp(argv[3]);
  tls.pem_private_key = slurp(argv[4]);
  const std::string payload = slurp(argv[6]);
  grpc::Slice slice(payload);
  const grpc::ByteBuffer request(&slice, 1);

  // One HTTP/2 connection per channel (a distinct channel argument keeps grpc from
  // sharing the subchannel), so that SO_REUSEPORT listeners each get some.
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int c = 0; c < connections; ++c) {
    grpc::ChannelArguments args;
    args.SetInt("agentd.bench.connection", c);
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto channel = grpc::CreateCustomChannel(address, grpc::SslCredentials(tls), args);
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
      std::fprintf(stderr, "unary_load: cannot connect to %s\n", address.c_str());
      return 1;
    }
    channels.push_back(channel);
  }
  std::vector<Worker> workers(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      Worker& w = workers[t];
      grpc::GenericStub stub(channels[t % connections]);
      grpc::CompletionQueue cq;
      std::string response;
      call_once(stub, method, request, cq, &response);  // warm up, outside the window
      while (epoch_now() < start_at) std::this_thread::sleep_for(std::chrono::microseconds(500));
      const double end = start_at + seconds;
      while (epoch_now() < end) {
        auto began = std::chrono::steady_clock::now();
        if (!call_once(stub, method, request, cq, &response) || response.empty()) {
          ++w.errors;
          continue;
        }
        w.latencies.push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - began)
                .count());
      }
      w.last_response = response;
      cq.Shutdown();
      void* tag = nullptr;
      bool ok = false;
      while (cq.Next(&tag, &ok)) {
      }
    });
  }
  while (epoch_now() < start_at) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const double cpu_began = cpu_seconds();
  for (auto& th : pool) th.join();
  const double cpu = cpu_seconds() - cpu_began;
  long calls = 0, errors = 0;
  std::ofstream lat(out + ".lat");
  for (const auto& w : workers) {
    calls += w.latencies.size();
    errors += w.errors;
    for (double l : w.latencies) lat << l << '\n';
  }
  for (const auto& w : workers) {
    if (!w.last_response.empty()) {
      std::ofstream(out + ".resp", std::ios::binary) << w.last_response;
      break;
    }
  }
  std::printf("%ld %ld %.6f\n", calls, errors, cpu);
  return 0;
}
