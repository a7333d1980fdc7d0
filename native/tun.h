// TUN device: open, configure (MTU, address, up) with ioctl. No napi.h here so
// it can be used from plain C++ tests and benchmarks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fakeproxy {

// A failed system call with the step that failed; the addon turns it into a JS
// error with code/errno/syscall and a message that names the fix.
struct SysError {
  int err;              // errno
  std::string syscall;  // "open", "ioctl(TUNSETIFF)", ...
  std::string message;  // operator-readable, names the fix
};

struct TunConfig {
  std::string name;     // <= 15 bytes
  uint32_t mtu;         // bytes
  uint32_t address;     // gateway, host byte order
  uint32_t prefix_len;  // 1..30
  uint32_t queues;      // >= 1; > 1 uses IFF_MULTI_QUEUE
  // Kernel transmit queue of the device (SIOCSIFTXQLEN): packets the kernel
  // routes into the TUN wait here until the engine reads them; when it is full
  // the kernel drops them (tx_dropped). 0 keeps the kernel's default (500).
  uint32_t tx_queue_len = 0;
  // IFF_VNET_HDR + TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6): the
  // kernel hands over TSO super-packets (up to 64 KiB) with partial checksums
  // behind a virtio_net_hdr and accepts GSO packets back. When the kernel
  // refuses, the device is opened without (TunResult::offload false).
  bool offload = true;
};

struct TunResult {
  std::string name;
  int ifindex = 0;
  std::vector<int> fds;
  bool offload = false;       // every fd carries a virtio_net_hdr, offloads on
  std::string offload_error;  // why offload was asked for but is off ("" otherwise)
};

// Opens and configures the device. On failure closes whatever it opened (the
// non-persistent device disappears with its last fd) and returns false with
// *error filled in.
bool TunOpen(const TunConfig& cfg, TunResult* out, SysError* error);

// True when fd is a TUN queue opened with IFF_VNET_HDR (asks TUNGETIFF).
bool TunHasVnetHdr(int fd);

// Closes the fds; the device, its address and its prefix route go with the last.
void TunClose(const std::vector<int>& fds);

}  // namespace fakeproxy
