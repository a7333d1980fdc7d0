#include "tun.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

namespace fakeproxy {
namespace {

std::string PermissionHint() {
  return "fakeproxy needs CAP_NET_ADMIN to create a TUN device (run as root, or grant it: "
         "setcap cap_net_admin+ep $(which node))";
}

// Maps the errno of a step to a message an operator can act on.
SysError MakeError(int err, const std::string& syscall, const std::string& step, const std::string& name) {
  std::string msg;
  switch (err) {
    case EPERM:
    case EACCES:
      msg = step + ": " + PermissionHint();
      break;
    case ENOENT:
    case ENODEV:
    case ENXIO:
      msg = step +
            ": /dev/net/tun is missing: load the tun module (modprobe tun) or, in a container, pass "
            "--device /dev/net/tun";
      break;
    case EBUSY:
      msg = step + ": device " + name +
            " is held by another process (is another fakeproxy running?): stop it or choose another --tun name";
      break;
    case EEXIST:
      msg = step + ": a device named " + name + " already exists and is not a TUN: choose another --tun name";
      break;
    case EINVAL:
      msg = step + ": the kernel rejected the value (" + std::string(strerror(err)) + ")";
      break;
    default:
      msg = step + ": " + std::string(strerror(err));
  }
  return SysError{err, syscall, msg};
}

bool IfReq(int sock, unsigned long req, struct ifreq* ifr, const char* syscall, const std::string& step,
           const std::string& name, SysError* error) {
  if (ioctl(sock, req, ifr) < 0) {
    *error = MakeError(errno, syscall, step, name);
    return false;
  }
  return true;
}

void SetInet(struct sockaddr* sa, uint32_t host_order) {
  struct sockaddr_in* sin = reinterpret_cast<struct sockaddr_in*>(sa);
  memset(sin, 0, sizeof(*sin));
  sin->sin_family = AF_INET;
  sin->sin_addr.s_addr = htonl(host_order);
}

}  // namespace

bool TunOpen(const TunConfig& cfg, TunResult* out, SysError* error) {
  if (cfg.name.empty() || cfg.name.size() >= IFNAMSIZ) {
    *error = SysError{EINVAL, "ioctl(TUNSETIFF)",
                      "device name '" + cfg.name + "' must be 1 to 15 bytes long: choose a shorter --tun name"};
    return false;
  }
  if (cfg.prefix_len < 1 || cfg.prefix_len > 30) {
    *error = SysError{EINVAL, "ioctl(SIOCSIFNETMASK)", "prefix length must be between /1 and /30"};
    return false;
  }
  uint32_t queues = cfg.queues == 0 ? 1 : cfg.queues;
  std::vector<int> fds;
  int sock = -1;
  bool ok = false;
  bool offload = cfg.offload;
  struct ifreq ifr;

retry:
  for (uint32_t q = 0; q < queues; q++) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
      *error = MakeError(errno, "open", "open /dev/net/tun", cfg.name);
      goto exit_close;
    }
    fds.push_back(fd);
    memset(&ifr, 0, sizeof(ifr));
    // IFF_NO_PI: packets are bare IP, no 4-byte protocol header. Without
    // IFF_VNET_HDR the kernel hands us complete checksums and expects them
    // back; with it every packet starts with a virtio_net_hdr (engine.h).
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (queues > 1 ? IFF_MULTI_QUEUE : 0) | (offload ? IFF_VNET_HDR : 0);
    memcpy(ifr.ifr_name, cfg.name.data(), cfg.name.size());
    // TUNSETIFF on an existing non-persistent device that another process
    // holds fails with EBUSY: that is how a second instance is refused.
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
      int err = errno;
      if (offload && q == 0 && err == EINVAL) {
        out->offload_error = std::string("ioctl(TUNSETIFF, IFF_VNET_HDR): ") + strerror(err);
        TunClose(fds);
        fds.clear();
        offload = false;
        goto retry;
      }
      *error = MakeError(err, "ioctl(TUNSETIFF)", "create TUN device " + cfg.name, cfg.name);
      goto exit_close;
    }
    if (offload && q == 0) {
      // Device-wide settings, made once through the first queue.
      int hdr_sz = 10;  // sizeof(struct virtio_net_hdr): no num_buffers
      int le = 1;       // little-endian header fields (packet.h VnetHdr)
      const char* step = nullptr;
      if (ioctl(fd, TUNSETVNETHDRSZ, &hdr_sz) < 0)
        step = "ioctl(TUNSETVNETHDRSZ)";
      else if (ioctl(fd, TUNSETVNETLE, &le) < 0 && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__)
        step = "ioctl(TUNSETVNETLE)";
      else if (ioctl(fd, TUNSETOFFLOAD, static_cast<unsigned long>(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)) < 0)
        step = "ioctl(TUNSETOFFLOAD)";
      if (step != nullptr) {
        out->offload_error = std::string(step) + ": " + strerror(errno);
        TunClose(fds);
        fds.clear();
        offload = false;
        goto retry;
      }
    }
  }

  sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) {
    *error = MakeError(errno, "socket", "open control socket", cfg.name);
    goto exit_close;
  }

  memset(&ifr, 0, sizeof(ifr));
  memcpy(ifr.ifr_name, cfg.name.data(), cfg.name.size());
  if (!IfReq(sock, SIOCGIFINDEX, &ifr, "ioctl(SIOCGIFINDEX)", "look up " + cfg.name, cfg.name, error)) goto exit_close;
  out->ifindex = ifr.ifr_ifindex;

  memset(&ifr, 0, sizeof(ifr));
  memcpy(ifr.ifr_name, cfg.name.data(), cfg.name.size());
  ifr.ifr_mtu = static_cast<int>(cfg.mtu);
  if (!IfReq(sock, SIOCSIFMTU, &ifr, "ioctl(SIOCSIFMTU)", "set MTU " + std::to_string(cfg.mtu) + " on " + cfg.name,
             cfg.name, error))
    goto exit_close;

  if (cfg.tx_queue_len > 0) {
    memset(&ifr, 0, sizeof(ifr));
    memcpy(ifr.ifr_name, cfg.name.data(), cfg.name.size());
    ifr.ifr_qlen = static_cast<int>(cfg.tx_queue_len);
    if (!IfReq(sock, SIOCSIFTXQLEN, &ifr, "ioctl(SIOCSIFTXQLEN)",
               "set txqueuelen " + std::to_string(cfg.tx_queue_len) + " on " + cfg.name, cfg.name, error))
      goto exit_close;
  }

  memset(&ifr, 0, sizeof(ifr));
  memcpy(ifr.ifr_name, cfg.name.data(), cfg.name.size());
  SetInet(&ifr.ifr_addr, cfg.address);
  if (!IfReq(sock, SIOCSIFADDR, &ifr, "ioctl(SIOCSIFADDR)", "set address on " + cfg.name, cfg.name, error))
    goto exit_close;

  memset(&ifr, 0, sizeof(ifr));
  memcpy(ifr.ifr_name, cfg.name.data(), cfg.name.size());
  SetInet(&ifr.ifr_netmask, cfg.prefix_len == 0 ? 0 : (0xffffffffu << (32 - cfg.prefix_len)));
  if (!IfReq(sock, SIOCSIFNETMASK, &ifr, "ioctl(SIOCSIFNETMASK)", "set netmask on " + cfg.name, cfg.name, error))
    goto exit_close;

  memset(&ifr, 0, sizeof(ifr));
  memcpy(ifr.ifr_name, cfg.name.data(), cfg.name.size());
  if (!IfReq(sock, SIOCGIFFLAGS, &ifr, "ioctl(SIOCGIFFLAGS)", "read flags of " + cfg.name, cfg.name, error))
    goto exit_close;
  // Bringing the device up with an address and netmask makes the kernel add
  // the prefix route (range dev fp0 proto kernel scope link src gateway).
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (!IfReq(sock, SIOCSIFFLAGS, &ifr, "ioctl(SIOCSIFFLAGS)", "bring " + cfg.name + " up", cfg.name, error))
    goto exit_close;

  out->name = cfg.name;
  out->fds = fds;
  out->offload = offload;
  ok = true;

exit_close:
  if (sock >= 0) close(sock);
  if (!ok) TunClose(fds);
  return ok;
}

bool TunHasVnetHdr(int fd) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  if (ioctl(fd, TUNGETIFF, &ifr) < 0) return false;
  return (ifr.ifr_flags & IFF_VNET_HDR) != 0;
}

void TunClose(const std::vector<int>& fds) {
  for (int fd : fds) {
    if (fd >= 0) close(fd);
  }
}

}  // namespace fakeproxy
