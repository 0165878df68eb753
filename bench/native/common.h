// Helpers shared by the native bench clients (unary_load.cc, watch_load.cc).
#pragma once

#include <grpcpp/grpcpp.h>
#include <sys/resource.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace bench {

inline std::string slurp(const char* path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// This process's user + system CPU so far.
inline double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec +
         u.ru_stime.tv_usec / 1e6;
}

// Mutual TLS: the CA that signed the server, and this client's certificate and key.
inline std::shared_ptr<grpc::ChannelCredentials> tls_credentials(const char* ca, const char* cert,
                                                                 const char* key) {
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = slurp(ca);
  tls.pem_cert_chain = slurp(cert);
  tls.pem_private_key = slurp(key);
  return grpc::SslCredentials(tls);
}

inline grpc::ByteBuffer buffer_of(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

inline std::string bytes_of(grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

}  // namespace bench
