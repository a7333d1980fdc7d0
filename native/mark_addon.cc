// SO_MARK for the daemon's own sockets. In global mode an ip rule sends
// packets carrying --fwmark to the main table, so only unmarked traffic
// (the apps') is routed into the TUN. A TCP socket must carry the mark
// before connect(): the route of its SYN (and the cached route of the whole
// connection) is chosen then, so TypeScript gets a fresh marked fd and lets
// Node connect it. An unconnected UDP socket is routed per datagram, so
// marking it after bind is enough.
#include "mark_addon.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "napi_errors.h"

namespace fakeproxy {
namespace {

bool GetMarkArg(const Napi::CallbackInfo& info, size_t i, const char* usage, uint32_t* mark) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    ThrowArg(info.Env(), usage);
    return false;
  }
  const double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 1 && v <= 4294967295.0) || v != static_cast<double>(static_cast<uint32_t>(v))) {
    ThrowArg(info.Env(), std::string(usage) + ": mark must be an integer 1..0xffffffff");
    return false;
  }
  *mark = static_cast<uint32_t>(v);
  return true;
}

// (number, mark) arguments: false once it threw (naming `usage`).
bool IntAndMarkArgs(const Napi::CallbackInfo& info, const char* usage, int* first, uint32_t* mark) {
  if (info.Length() < 1 || !info[0].IsNumber()) {
    ThrowArg(info.Env(), usage);
    return false;
  }
  if (!GetMarkArg(info, 1, usage, mark)) return false;
  *first = info[0].As<Napi::Number>().Int32Value();
  return true;
}

void ThrowMark(Napi::Env env, int err) {
  ThrowSys(env, err, "setsockopt",
           err == EPERM ? "set SO_MARK: needs CAP_NET_ADMIN (run as root)" : "set SO_MARK on a socket");
}

// markedTcpSocket(family 4|6, mark): a non-blocking, close-on-exec TCP socket
// carrying `mark`, not yet bound or connected. The caller owns the fd.
Napi::Value MarkedTcpSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "markedTcpSocket(family 4|6, mark)";
  int fam;
  uint32_t mark;
  if (!IntAndMarkArgs(info, usage, &fam, &mark)) return env.Undefined();
  if (fam != 4 && fam != 6) {
    ThrowArg(env, usage);
    return env.Undefined();
  }
  int fd = socket(fam == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ThrowSys(env, errno, "socket", "create an upstream TCP socket (raise the fd limit: ulimit -n)");
    return env.Undefined();
  }
  if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) {
    const int err = errno;
    close(fd);
    ThrowMark(env, err);
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

// setSocketMark(fd, mark): mark an existing socket (UDP after bind).
Napi::Value SetSocketMark(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint32_t mark;
  if (!IntAndMarkArgs(info, "setSocketMark(fd, mark)", &fd, &mark)) return env.Undefined();
  if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) ThrowMark(env, errno);
  return env.Undefined();
}

// socketMark(fd): the socket's SO_MARK (0 = none).
Napi::Value SocketMark(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    ThrowArg(env, "socketMark(fd)");
    return env.Undefined();
  }
  uint32_t mark = 0;
  socklen_t len = sizeof mark;
  if (getsockopt(info[0].As<Napi::Number>().Int32Value(), SOL_SOCKET, SO_MARK, &mark, &len) != 0) {
    ThrowSys(env, errno, "getsockopt", "read SO_MARK of a socket");
    return env.Undefined();
  }
  return Napi::Number::New(env, mark);
}

}  // namespace
}  // namespace fakeproxy

void InitMark(Napi::Env env, Napi::Object exports) {
  using namespace fakeproxy;
  exports.Set("markedTcpSocket", Napi::Function::New(env, MarkedTcpSocket, "markedTcpSocket"));
  exports.Set("setSocketMark", Napi::Function::New(env, SetSocketMark, "setSocketMark"));
  exports.Set("socketMark", Napi::Function::New(env, SocketMark, "socketMark"));
}
