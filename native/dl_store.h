// Client of rank 0's control store (src/parallel/store.ts), a TCP key-value store that the comm
// backends rendezvous through: Gloo's connectFullMesh exchanges transport addresses in it, NCCL's
// ncclUniqueId travels in it. Header-only so the Gloo plugin and the CUDA build share it.
//
// Wire format, little-endian: a request is op (1 byte: 'S' set, 'G' get), key length (u32), key,
// and for 'S' value length (u32), value. 'S' is answered with one byte 'K'; 'G' with value length
// (u32) and value once the key exists (the server holds the answer until some rank sets it).
#pragma once

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <poll.h>

#include <atomic>
#include <chrono>
#include <cerrno>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

// Internal linkage: the std::thread and std::vector instantiations over these classes must not be
// exported from the libraries (which export the C ABI and nothing else).
namespace {

class DlStoreClient {
 public:
  // Connects, retrying until timeout_ms: ranks may start before rank 0 listens.
  DlStoreClient(const std::string& host, int port, int timeout_ms) : timeout_ms_(timeout_ms) {
    const auto deadline = now_ms() + timeout_ms;
    std::string last = "no attempt";
    while (true) {
      fd_ = try_connect(host, port, &last);
      if (fd_ >= 0) break;
      if (now_ms() >= deadline) {
        throw std::runtime_error("cannot reach the control store at " + host + ":" + std::to_string(port) +
                                 " within " + std::to_string(timeout_ms) + " ms: " + last);
      }
      usleep(50 * 1000);
    }
    timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~DlStoreClient() {
    if (fd_ >= 0) close(fd_);
  }
  DlStoreClient(const DlStoreClient&) = delete;
  DlStoreClient& operator=(const DlStoreClient&) = delete;

  void set(const std::string& key, const std::vector<char>& value) {
    std::vector<char> msg;
    msg.push_back('S');
    put_u32(msg, key.size());
    msg.insert(msg.end(), key.begin(), key.end());
    put_u32(msg, value.size());
    msg.insert(msg.end(), value.begin(), value.end());
    write_all(msg.data(), msg.size(), key);
    char ack = 0;
    read_all(&ack, 1, key);
    if (ack != 'K') throw std::runtime_error("the control store refused key " + key);
  }

  // Blocks until some rank has set the key (at most the timeout given at construction).
  std::vector<char> get(const std::string& key) {
    std::vector<char> msg;
    msg.push_back('G');
    put_u32(msg, key.size());
    msg.insert(msg.end(), key.begin(), key.end());
    write_all(msg.data(), msg.size(), key);
    uint8_t len_bytes[4];
    read_all(len_bytes, 4, key);
    const uint32_t len = len_bytes[0] | (len_bytes[1] << 8) | (len_bytes[2] << 16) | (uint32_t(len_bytes[3]) << 24);
    std::vector<char> value(len);
    if (len > 0) read_all(value.data(), len, key);
    return value;
  }

 private:
  int fd_ = -1;
  int timeout_ms_;

  static long long now_ms() {
    timeval tv;
    gettimeofday(&tv, nullptr);
    return tv.tv_sec * 1000LL + tv.tv_usec / 1000;
  }

  static int try_connect(const std::string& host, int port, std::string* why) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    const int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (rc != 0) {
      *why = gai_strerror(rc);
      return -1;
    }
    int fd = -1;
    for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
      fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
      if (fd < 0) continue;
      if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
      *why = std::strerror(errno);
      close(fd);
      fd = -1;
    }
    freeaddrinfo(res);
    return fd;
  }

  static void put_u32(std::vector<char>& out, size_t v) {
    for (int i = 0; i < 4; i++) out.push_back(char((v >> (8 * i)) & 0xff));
  }

  void write_all(const void* data, size_t n, const std::string& key) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = send(fd_, p, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) throw std::runtime_error("lost the control store while sending key " + key + ": " + std::strerror(errno));
      p += w;
      n -= size_t(w);
    }
  }

  void read_all(void* data, size_t n, const std::string& key) {
    char* p = static_cast<char*>(data);
    while (n > 0) {
      const ssize_t r = recv(fd_, p, n, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        throw std::runtime_error("key " + key + " did not appear in the control store within " +
                                 std::to_string(timeout_ms_) + " ms (a rank did not join?)");
      }
      if (r <= 0) throw std::runtime_error("lost the control store while waiting for key " + key);
      p += r;
      n -= size_t(r);
    }
  }
};

// The store itself, on rank 0: one thread accepts, one thread per connection answers. A 'G' for a
// missing key waits (polling its socket, so a rank that goes away frees its thread) until a 'S'.
class DlStoreServer {
 public:
  // Listens on host:port (port 0: any free port, see port()).
  DlStoreServer(const std::string& host, int port) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    addrinfo* res = nullptr;
    const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (rc != 0) throw std::runtime_error("cannot resolve " + host + ": " + gai_strerror(rc));
    std::string why = "no address";
    for (addrinfo* a = res; a != nullptr && fd_ < 0; a = a->ai_next) {
      int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
      if (fd < 0) continue;
      int one = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 64) == 0) {
        fd_ = fd;
      } else {
        why = std::strerror(errno);
        close(fd);
      }
    }
    freeaddrinfo(res);
    if (fd_ < 0) throw std::runtime_error("cannot listen on " + host + ":" + std::to_string(port) + ": " + why);
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                                             : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~DlStoreServer() {
    stopping_ = true;
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    cv_.notify_all();
    acceptor_.join();
    for (auto& t : workers_) t.join();
  }
  DlStoreServer(const DlStoreServer&) = delete;
  DlStoreServer& operator=(const DlStoreServer&) = delete;

  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread acceptor_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::vector<char>> values_;

  void accept_loop() {
    while (!stopping_) {
      const int c = accept(fd_, nullptr, nullptr);
      if (c < 0) {
        if (stopping_) return;
        continue;
      }
      std::lock_guard<std::mutex> lock(mu_);
      workers_.emplace_back([this, c] {
        serve(c);
        close(c);
      });
    }
  }

  bool read_n(int c, void* data, size_t n) {
    char* p = static_cast<char*>(data);
    while (n > 0) {
      pollfd pfd{c, POLLIN, 0};
      const int ready = poll(&pfd, 1, 200);
      if (stopping_) return false;
      if (ready <= 0) continue;
      const ssize_t r = recv(c, p, n, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      p += r;
      n -= size_t(r);
    }
    return true;
  }

  static bool write_n(int c, const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = send(c, p, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w;
      n -= size_t(w);
    }
    return true;
  }

  bool read_blob(int c, std::vector<char>* out) {
    uint8_t b[4];
    if (!read_n(c, b, 4)) return false;
    const uint32_t len = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24);
    if (len > (64u << 20)) return false;  // nothing we store is near this: a confused peer
    out->resize(len);
    return len == 0 || read_n(c, out->data(), len);
  }

  void serve(int c) {
    while (!stopping_) {
      char op = 0;
      std::vector<char> key_bytes;
      if (!read_n(c, &op, 1) || !read_blob(c, &key_bytes)) return;
      const std::string key(key_bytes.begin(), key_bytes.end());
      if (op == 'S') {
        std::vector<char> value;
        if (!read_blob(c, &value)) return;
        {
          std::lock_guard<std::mutex> lock(mu_);
          values_[key] = std::move(value);
        }
        cv_.notify_all();
        if (!write_n(c, "K", 1)) return;
      } else if (op == 'G') {
        std::vector<char> value;
        {
          std::unique_lock<std::mutex> lock(mu_);
          while (!stopping_ && values_.find(key) == values_.end()) {
            cv_.wait_for(lock, std::chrono::milliseconds(200));
            pollfd pfd{c, POLLIN, 0};
            // A readable socket while we owe an answer means the peer hung up: stop waiting.
            if (poll(&pfd, 1, 0) > 0) return;
          }
          if (stopping_) return;
          value = values_[key];
        }
        uint8_t b[4] = {uint8_t(value.size()), uint8_t(value.size() >> 8), uint8_t(value.size() >> 16),
                        uint8_t(value.size() >> 24)};
        if (!write_n(c, b, 4) || !write_n(c, value.data(), value.size())) return;
      } else {
        return;
      }
    }
  }
};

}  // namespace
