// The NAT table: flows keyed both ways (forward 5-tuple and reverse NAT
// address), O(1) lookups, bounded by maxFlows, NAT address allocation with a
// reuse delay, TCP state from flags and expiry by per-state LRU lists.
//
// Not thread-safe: the Engine serialises every call under its mutex.
//
// Memory (x86-64): sizeof(Flow) = 152 bytes in chunked pools (pages are only
// touched as flows are created), plus two open-addressing index tables of
// 8-byte slots kept at load <= 0.625 (16..32 bytes per flow per table).
// Measured by bench/engine_bench.cc: see its output and the README numbers.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "packet.h"

namespace fp {

enum class FlowState : uint8_t { Syn, Established, Fin, Closed, Udp };
enum class CloseReason : uint8_t { Fin, Rst, Timeout, Evicted, Shutdown };
// Which port on the gateway the flow is NATed to.
enum class Target : uint8_t { Listener, Dns };

const char* state_name(FlowState s);
const char* reason_name(CloseReason r);

// ---- counters -------------------------------------------------------------
// Written while holding the Engine mutex (so a relaxed load+store is a
// race-free increment), except the engine thread's ring counters (ringReads,
// ringCoalesced), which it bumps with fetch_add outside the lock; read from JS
// at any time without the lock.
// An X-macro list: clang-format re-wraps it differently on every pass.
// clang-format off
#define FP_COUNTERS(X)                                                                                            \
  X(pktsIn) X(bytesIn) X(pktsOut) X(bytesOut) X(forwarded) X(reversed) X(echoReplies) X(icmpErrorsTranslated)   \
  X(rstSent) X(icmpUnreachSent) X(flowsCreated) X(flowsClosed) X(flowsExpired) X(flowsRefused) X(natExhausted)  \
  X(dropTruncated) X(dropBadVersion) X(dropBadHeader) X(dropIpOptions) X(dropFragment) X(dropIpv6)              \
  X(dropProtocol) X(dropToGateway) X(dropBadAddress) X(dropReverseNoFlow) X(dropTcpNoFlow) X(dropIcmpUnsupported) \
  X(dropIcmpNoFlow) X(readErrors) X(writeErrors) X(batches) X(eventsDropped) X(cooldownOverflow) X(gsoIn)     \
  X(csumCompleted) X(rstOnExpiry) X(rstOnEvict) X(flowsEarlyDropped) X(halfOpenCapped) X(dropForeignSource) X(dropNatSource)  \
  X(udpGsoWrites) X(udpGsoSegments) X(udpGsoRefused) X(rstIgnored) X(flowsRevived) X(ringReads) X(firstSynDropped) \
  X(ringCoalesced)
// clang-format on

// Gauges: current values, also relaxed atomics.
#define FP_GAUGES(X) X(flowsActive) X(tcpFlows) X(udpFlows) X(memoryBytes) X(cooldownPairs) X(halfOpenFlows)

struct Counters {
#define FP_DECL(name) std::atomic<uint64_t> name{0};
  FP_COUNTERS(FP_DECL)
  FP_GAUGES(FP_DECL)
#undef FP_DECL
};

// Increment by the single writer that holds the engine mutex.
inline void bump(std::atomic<uint64_t>& c, uint64_t n = 1) {
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}
inline void setg(std::atomic<uint64_t>& c, uint64_t v) { c.store(v, std::memory_order_relaxed); }

// ---- flows ----------------------------------------------------------------
constexpr uint32_t kNil = 0xffffffffu;

namespace tcpflag {
constexpr uint8_t SYNACK_SEEN = 1;  // Listener answered the SYN
constexpr uint8_t FIN_OUT = 2;      // app sent FIN
constexpr uint8_t FIN_IN = 4;       // Listener sent FIN
constexpr uint8_t APP_NXT = 8;      // Flow::appNxt is known
constexpr uint8_t REPORTED = 16;    // its open event was queued for JS (see FlowTable::report_open)
}  // namespace tcpflag

struct Flow {
  FlowKey key;  // original 5-tuple (app side)
  IpAddr nat;   // NAT address the Listener sees
  uint16_t natPort;
  FlowState state;
  uint8_t tcpFlags;
  uint8_t list;  // which LRU list (index into FlowTable::lists_), or kNoList
  Target target;
  CloseReason closeReason;  // meaningful once state == Closed
  uint8_t pad_;
  uint32_t self;        // own pool index
  uint32_t prev, next;  // LRU links (next doubles as free-list link)
  uint32_t appNxt;      // TCP: next sequence number the app expects (valid with tcpflag::APP_NXT); fills padding
  uint64_t id;
  int64_t createdMs;
  int64_t lastSeenMs;
  int64_t linkMs;  // when last (re)linked at its list's tail; linkMs <= lastSeenMs
  uint64_t pktsOut, bytesOut, pktsIn, bytesIn;
  // TCP, what the Listener will accept a RST from the app side at (RFC 5961
  // 3.2): lsnAck is its latest acknowledgement (its RCV.NXT as it announced
  // it); appEnd the end of the app's data the engine saw arrive in order
  // (from [lsnAck, appEnd] only, so a blind segment cannot move it). Both
  // start at the SYN's seq + 1.
  uint32_t lsnAck, appEnd;
};

struct FlowEvent {
  bool open;
  CloseReason reason;
  Flow flow;  // snapshot at the time of the event
};

// No defaults in C++: the caller passes every value (the addon gets them from
// src/options.ts through NatManager); an unset 0 fails validate_table_config.
struct Timeouts {
  int64_t tcpSynMs = 0;
  int64_t tcpEstablishedMs = 0;
  int64_t tcpFinMs = 0;
  int64_t tcpClosedMs = 0;
  int64_t udpMs = 0;
  int64_t udpDnsMs = 0;
};

struct TableConfig {
  uint32_t network = 0;  // host order
  int prefixLen = 0;
  uint32_t gateway = 0;  // host order
  uint32_t maxFlows = 0;
  Timeouts timeouts;
  int64_t reuseDelayMs = 0;
  size_t maxQueuedEvents = 1u << 20;
  // Most half-open (SYN seen, handshake not complete) TCP flows one source
  // address may hold; 0 = no cap. A new SYN beyond it is refused (RST).
  uint32_t maxHalfOpenPerSource = 0;
};

// Returns "" when the config is usable, else a message naming the fix.
std::string validate_table_config(const TableConfig& c);

// ---- open-addressing index: hash -> flow index ----------------------------
// Linear probing, 8-byte slots {index+1, hash}, backward-shift deletion (no
// tombstones), doubles at load 0.625, never shrinks.
class IndexTable {
 public:
  IndexTable();
  template <class Eq>
  uint32_t find(uint32_t h, Eq eq) const {
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.idx1 == 0) return kNil;
      if (s.hash == h && eq(s.idx1 - 1)) return s.idx1 - 1;
    }
  }
  void insert(uint32_t h, uint32_t idx);
  void erase(uint32_t h, uint32_t idx);
  size_t size() const { return count_; }
  size_t bytes() const { return slots_.size() * sizeof(Slot); }

 private:
  struct Slot {
    uint32_t idx1;
    uint32_t hash;
  };
  void grow();
  std::vector<Slot> slots_;
  size_t mask_;
  size_t count_ = 0;
};

// ---- NAT pair allocator ----------------------------------------------------
// The space is (every host of the range but network, broadcast and gateway) x
// ports 1024..65535. A cursor walks it host-first (consecutive flows get
// different addresses), so a freed pair comes round again only after a full
// lap; a cooldown set additionally refuses pairs freed < reuseDelayMs ago,
// which matters only for small ranges or extreme churn.
class NatAllocator {
 public:
  static constexpr uint32_t kPortMin = 1024;
  static constexpr uint32_t kPorts = 65536 - kPortMin;
  void init(uint32_t network, int prefixLen, uint32_t gateway, size_t cooldownCap, int64_t reuseDelayMs);
  uint64_t space() const { return uint64_t(hosts_) * kPorts; }
  uint32_t host_addr(uint32_t hostIdx) const;
  // Host index of a NAT address, or kNil when it is not one.
  uint32_t host_index(uint32_t addr) const;
  // Next usable pair; `live(addr, port)` says whether it is in use.
  template <class Live>
  bool next(int64_t now, Live live, uint32_t* addr, uint16_t* port, Counters& c);
  void release(uint32_t addr, uint16_t port, int64_t now, Counters& c);
  void purge(int64_t now);
  size_t cooling() const { return fifo_.size(); }
  size_t bytes() const { return fifo_.size() * sizeof(Cool) + set_.size() * sizeof(uint64_t); }

 private:
  struct Cool {
    uint64_t key;
    int64_t freedMs;
  };
  static uint64_t pack(uint32_t hostIdx, uint32_t port) { return uint64_t(hostIdx) << 16 | port; }
  bool cooling_contains(uint64_t key) const;
  void cooling_insert(uint64_t key);
  void cooling_erase(uint64_t key);
  void cooling_grow();

  uint32_t network_ = 0, gateway_ = 0, hosts_ = 0;
  uint32_t curHost_ = 0, curPort_ = 0;
  int64_t reuseDelayMs_ = 0;
  size_t cap_ = 0;
  std::deque<Cool> fifo_;      // in free order
  std::vector<uint64_t> set_;  // open addressing, 0 = empty
  size_t setCount_ = 0;
};

// ---- the table --------------------------------------------------------------
class FlowTable {
 public:
  enum class Create { Ok, Full, Exhausted, HalfOpenCap, FirstSyn };
  FlowTable(const TableConfig& cfg, Counters& counters);
  ~FlowTable();
  FlowTable(const FlowTable&) = delete;
  FlowTable& operator=(const FlowTable&) = delete;

  const TableConfig& config() const { return cfg_; }
  Flow* find(const FlowKey& k);
  Flow* find_nat(const NatKey& k);
  // New flow (the caller checked find() first). Records an open event, for
  // TCP only once the flow leaves the half-open state (see report_open).
  // When the table is full, a closed TCP flow (lingering after both FINs or
  // a RST), else the least recently seen half-open one, is evicted to make
  // room (Linux conntrack's early_drop: entries that are not assured go
  // first; a half-open one whose SYN-ACK went out becomes a ghost, see
  // revive()); established, half-closed and UDP flows are never evicted for
  // a new one. Refused (Full) when neither is left, or (HalfOpenCap) when a new
  // TCP flow would exceed the source's maxHalfOpenPerSource.
  // `synGate` (a SYN from the TUN): while the flow early drop would evict
  // is younger than kEvictGraceMs (the table turns over faster than a real
  // client retransmits its SYN: a flood), a SYN whose 4-tuple was not seen
  // lately is dropped (FirstSyn) and remembered, and its retransmission
  // gets in. Floods never retransmit (hping3, spoofed or from its own
  // address), so they cost one lookup per SYN instead of a handshake with
  // the Listener, the TUN queue stops overflowing, and a real client pays
  // one SYN retransmission (1 s) while the flood lasts.
  Flow* create(const FlowKey& k, Target target, int64_t now, Create* why, bool synGate = false);
  // The app of a half-open flow early-dropped moments ago (see ghosts_) sent
  // its handshake ACK after all: the flow comes back with its NAT pair, so
  // the Listener, which still holds its half of the handshake, completes it.
  // nullptr when there is no such flow or its pair was handed out again.
  Flow* revive(const FlowKey& k, int64_t now);
  // A packet passed: refresh last-seen (relinks at most every kRelinkMs).
  void touch(Flow* f, int64_t now);
  void set_state(Flow* f, FlowState s, int64_t now);
  // Remove now (close event with the given reason).
  void remove(Flow* f, CloseReason reason, int64_t now);
  // Free every flow whose state timeout has passed. Cost O(expired + lists).
  // Remove flows idle past their timeout. `timedOut` (optional) receives a
  // copy of every TCP flow that was still open (not Closed) and whose app
  // sequence is known: the engine resets the app side of those. It also
  // receives the half-open flows evicted since the last call (closeReason
  // Evicted; see evicted_).
  void expire(int64_t now, std::vector<Flow>* timedOut = nullptr);
  // Remove everything (reason Shutdown).
  void clear(int64_t now);
  template <class F>
  void for_each(F fn) const {
    for (uint32_t li = 0; li < kLists; li++)
      for (uint32_t i = lists_[li].head; i != kNil; i = at(i).next) fn(at(i));
  }
  size_t size() const { return size_; }
  size_t memory_bytes() const;
  std::vector<FlowEvent>& events() { return events_; }
  int64_t timeout_of(const Flow& f) const;

  // Expiry lists are relinked at most this often per flow, so a flow can be
  // freed at most this late (never early). Keeps the packet path to a
  // timestamp store in the common case.
  static constexpr int64_t kRelinkMs = 1000;
  static constexpr uint32_t kChunkShift = 14;  // 16384 flows per pool chunk
  // A flow keeps its slot this long after its creation against a first
  // SYN: the initial retransmission timeout (RFC 6298 2.1), after which a
  // real client has sent its SYN again.
  static constexpr int64_t kEvictGraceMs = 1000;
  // How long a dropped first SYN's 4-tuple is remembered: covers a client's
  // SYN retransmissions at 1, 3 and 7 s even when one of them is dropped too.
  static constexpr int64_t kSynMemoryMs = 8000;
  // Remembered 4-tuples (direct-mapped, 8 B each, allocated at the first
  // drop: 8 MiB). At 100 000 flood SYNs/s a tuple survives the 1 s to its
  // retransmission with probability e^-0.1 (90 %); the next one gets in.
  static constexpr uint32_t kSynMemoryBits = 20;

 private:
  static constexpr uint32_t kLists = 6;  // syn, est, fin, closed, udp, udp-dns
  static constexpr uint8_t kNoList = 0xff;
  struct List {
    uint32_t head = kNil, tail = kNil;
  };
  Flow& at(uint32_t i) const { return chunks_[i >> kChunkShift][i & ((1u << kChunkShift) - 1)]; }
  uint32_t list_for(const Flow& f) const;
  void link_tail(uint32_t i, int64_t now);
  void unlink(uint32_t i);
  uint32_t alloc_slot();
  void push_event(bool open, CloseReason r, const Flow& f);
  // JS hears of a TCP flow when its handshake completes (it leaves Syn for
  // anything but Closed), not at its SYN: a half-open flow is no connection
  // yet, and under a spoofed SYN flood every SYN is a new half-open flow that
  // is early-dropped or times out unanswered. Reporting those cost the JS
  // thread an open and a close event each (~50 000/s at full hping3 speed:
  // half a core, and the DNS server and control socket on that thread
  // stopped answering). A flow never reported closes silently; the native
  // counters and gauges (halfOpenFlows, flowsEarlyDropped) still count it.
  void report_open(Flow& f);
  uint32_t hash_fwd(const FlowKey& k) const;
  uint32_t hash_nat(const NatKey& k) const;
  static NatKey nat_key_of(const Flow& f);
  void free_index(uint32_t i, CloseReason reason, int64_t now);
  NatAllocator& alloc_for(uint8_t proto) { return proto == kProtoTcp ? allocTcp_ : allocUdp_; }
  void update_gauges();
  // Half-open accounting per source address (only with maxHalfOpenPerSource).
  void half_open_add(const Flow& f, int delta);
  // Early drop (see create()): frees one closed or half-open flow; false when
  // every flow is established, half-closed or UDP.
  bool make_room(int64_t now);
  // Whom make_room() would free: the closed flow that ended first, else the
  // oldest half-open one; kNil when neither exists.
  uint32_t evict_victim() const;
  // The synGate rule of create(): true when k must wait for its retransmission.
  bool first_syn_held(const FlowKey& k, int64_t now);
  void ghost_push(const Flow& f, int64_t now);
  // Retires the oldest ghost: its app gets a RST (rstOnEvict) unless revived.
  void ghost_pop();
  uint32_t ghost_find(const FlowKey& k) const;
  void ghost_kill(uint32_t slot);

  TableConfig cfg_;
  Counters& c_;
  std::vector<std::unique_ptr<Flow[]>> chunks_;
  uint32_t used_ = 0;         // high-water mark of pool indices
  uint32_t freeHead_ = kNil;  // free list through Flow::next
  size_t size_ = 0;
  size_t tcp_ = 0;
  IndexTable fwd_, rev_;
  std::array<List, kLists> lists_;
  NatAllocator allocTcp_, allocUdp_;
  uint64_t nextId_ = 1;
  uint64_t seed_[4];
  std::vector<FlowEvent> events_;
  // Ghosts (below) of half-open flows whose app already got a SYN-ACK (it
  // may believe it is connected) and that were not revived: expire() hands
  // them out with the timed out ones so the app is reset too. At most
  // kMaxEvictResets per expire round (~250 ms): under a spoofed flood these
  // RSTs go to made-up sources, so their number stays bounded.
  std::vector<Flow> evicted_;
  static constexpr size_t kMaxEvictResets = 64;
  // Ghosts: copies of the half-open flows early-dropped after their SYN-ACK
  // went to the app, oldest first, for kGhostMs or until kGhosts newer ones
  // push them out. Under a flood that keeps the TUN queue full a real
  // handshake crosses that queue twice (SYN-ACK out, the app's ACK back)
  // while the flood's SYNs turn the half-open part of the table over; with
  // a small table the app's ACK arrives after its flow was dropped. Its ACK
  // proves the app real: revive() puts the flow back. Allocated at the first
  // such drop (kGhosts * sizeof(Flow), 2.4 MiB); key.proto 0 marks a slot
  // revived or buried.
  static constexpr uint32_t kGhosts = 16384;
  static constexpr int64_t kGhostMs = 2000;
  std::vector<Flow> ghosts_;
  IndexTable ghostIdx_;  // hash_fwd(key) -> slot
  uint32_t ghostHead_ = 0, ghostCount_ = 0;
  std::vector<uint64_t> synMemory_;  // fingerprint << 32 | ms (mod 2^32) of a dropped first SYN
  size_t halfOpen_ = 0;              // flows on the syn list
  // source address (v4) -> half-open flows it holds; entries at 0 are erased.
  std::unordered_map<uint32_t, uint32_t> halfOpenBySrc_;
};

}  // namespace fp
