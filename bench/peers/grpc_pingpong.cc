// grpc_pingpong: the gRPC peer of bench/rpc_peers.sh. Unary RPC round trips per second and
// their latency on loopback, gRPC C++ (Debian's libgrpc++) over TLS or without it.
//
// Shape: one process. A gRPC sync server listens on 127.0.0.1:0 and serves Echo on the
// threads gRPC gives it; a sync stub in the main thread makes one Echo call after another
// (a --payload byte blob there, the same blob back), one call in flight. So the rate is the
// inverse of the round trip: what one request costs the whole stack (protobuf, HTTP/2,
// TLS records, gRPC's threads, the loopback socket), not what many concurrent clients
// can push. This is the plainest way to use gRPC C++ (sync API, default settings, one
// channel) and the same shape as cardnode's side, bench/rpc_roundtrip.
//
// --mode tls: a P-256 self-signed certificate for "localhost", made at start-up, is the
// server's identity and the client's only root; the client connects to 127.0.0.1 and
// checks the name "localhost" (GRPC_SSL_TARGET_NAME_OVERRIDE_ARG). --mode plain: insecure
// credentials on both sides.
//
// The first 0.5 s are warm-up (connection, handshake, allocator, caches) and not counted.
// Latency: steady_clock around each call; p50/p99 over all counted calls (nearest rank).
// Rate: counted calls over the time from the first counted call's start to the last one's
// end. Output, stdout, one line:
//
//   grpc mode=tls|plain rate_per_s=N p50_us=X p99_us=Y calls=K
//
//   grpc_pingpong --mode tls|plain [--payload BYTES] [--seconds S]
#include <grpcpp/grpcpp.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "pingpong.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;
using cardnode::bench::Blob;
using cardnode::bench::PingPong;

constexpr auto kWarmUp = std::chrono::milliseconds(500);

// One line on stderr, and out: _Exit, so gRPC's static teardown does not run while its
// server still has threads.
[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "grpc_pingpong: %s\n", msg.c_str());
  std::fflush(stderr);
  std::_Exit(1);
}

class EchoService final : public PingPong::Service {
  grpc::Status Echo(grpc::ServerContext*, const Blob* request, Blob* reply) override {
    reply->set_data(request->data());
    return grpc::Status::OK;
  }
};

struct Identity {
  std::string cert_pem, key_pem;
};

std::string bio_string(BIO* bio) {
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<size_t>(n));
}

// What `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1
// -subj /CN=localhost -addext subjectAltName=DNS:localhost` makes, in memory.
Identity self_signed_localhost() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  BIO* cert_bio = BIO_new(BIO_s_mem());
  BIO* key_bio = BIO_new(BIO_s_mem());
  bool ok = key && cert && cert_bio && key_bio;
  if (ok) {
    X509_set_version(cert, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -60);
    X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600);
    X509_set_pubkey(cert, key);
    X509_NAME* name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
    X509_set_issuer_name(cert, name);
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
    for (auto [nid, value] : {std::pair{NID_subject_alt_name, "DNS:localhost"},
                              std::pair{NID_basic_constraints, "critical,CA:TRUE"}}) {
      X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
      ok = ok && ext && X509_add_ext(cert, ext, -1);
      X509_EXTENSION_free(ext);
    }
    ok = ok && X509_sign(cert, key, EVP_sha256()) > 0 && PEM_write_bio_X509(cert_bio, cert) &&
         PEM_write_bio_PrivateKey(key_bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  }
  Identity id;
  if (ok) id = {bio_string(cert_bio), bio_string(key_bio)};
  BIO_free(key_bio);
  BIO_free(cert_bio);
  X509_free(cert);
  EVP_PKEY_free(key);
  if (!ok) die("cannot make a self-signed certificate (OpenSSL)");
  return id;
}

// Nearest rank over sorted values, in microseconds.
double percentile_us(const std::vector<Clock::duration>& sorted, double q) {
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return std::chrono::duration<double, std::micro>(sorted[rank - 1]).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode;
  size_t payload = 64;
  double seconds = 5;
  CLI::App app{"gRPC unary ping-pong on loopback: round trips per second and latency"};
  app.add_option("--mode", mode, "tls or plain")
      ->required()
      ->check(CLI::IsMember({"tls", "plain"}));
  app.add_option("--payload", payload, "bytes sent and echoed per call")
      ->capture_default_str()
      ->check(CLI::Range(size_t{0}, size_t{4} << 20));
  app.add_option("--seconds", seconds, "length of the run, the 0.5 s warm-up included")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 3600.0));
  CLI11_PARSE(app, argc, argv);
  const bool tls = mode == "tls";

  std::shared_ptr<grpc::ServerCredentials> server_creds = grpc::InsecureServerCredentials();
  std::shared_ptr<grpc::ChannelCredentials> client_creds = grpc::InsecureChannelCredentials();
  grpc::ChannelArguments channel_args;
  if (tls) {
    Identity id = self_signed_localhost();
    grpc::SslServerCredentialsOptions server_opts;
    server_opts.pem_key_cert_pairs.push_back({id.key_pem, id.cert_pem});
    server_creds = grpc::SslServerCredentials(server_opts);
    grpc::SslCredentialsOptions client_opts;
    client_opts.pem_root_certs = id.cert_pem;
    client_creds = grpc::SslCredentials(client_opts);
    channel_args.SetSslTargetNameOverride("localhost");
  }

  EchoService service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", server_creds, &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) die("cannot start the gRPC server on 127.0.0.1:0");

  auto channel =
      grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port), client_creds, channel_args);
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10)))
    die("the client did not connect to 127.0.0.1:" + std::to_string(port) + " within 10 s");
  std::unique_ptr<PingPong::Stub> stub = PingPong::NewStub(channel);

  Blob request;
  request.set_data(std::string(payload, 'x'));
  Blob reply;
  std::vector<Clock::duration> latencies;
  latencies.reserve(1 << 20);

  const Clock::time_point start = Clock::now();
  const Clock::time_point counted_from = start + kWarmUp;
  const Clock::time_point deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  Clock::time_point first_counted{}, last_end{};
  for (Clock::time_point t0 = start; t0 < deadline; t0 = Clock::now()) {
    grpc::ClientContext ctx;  // one per call, as gRPC requires
    grpc::Status st = stub->Echo(&ctx, request, &reply);
    const Clock::time_point t1 = Clock::now();
    if (!st.ok()) die("Echo failed: " + st.error_message());
    if (reply.data().size() != payload) die("Echo returned a blob of the wrong size");
    if (t0 < counted_from) continue;
    if (latencies.empty()) first_counted = t0;
    latencies.push_back(t1 - t0);
    last_end = t1;
  }
  server->Shutdown();
  if (latencies.empty()) die("no call was counted");

  const double window = std::chrono::duration<double>(last_end - first_counted).count();
  std::sort(latencies.begin(), latencies.end());
  std::printf("grpc mode=%s rate_per_s=%.0f p50_us=%.1f p99_us=%.1f calls=%zu\n", mode.c_str(),
              static_cast<double>(latencies.size()) / window, percentile_us(latencies, 0.50),
              percentile_us(latencies, 0.99), latencies.size());
  return 0;
}
