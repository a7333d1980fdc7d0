#include "flow_table.h"

#include <algorithm>
#include <cstring>
#include <random>

namespace fp {

const char* state_name(FlowState s) {
  switch (s) {
    case FlowState::Syn:
      return "syn";
    case FlowState::Established:
      return "established";
    case FlowState::Fin:
      return "fin";
    case FlowState::Closed:
      return "closed";
    case FlowState::Udp:
      return "udp";
  }
  return "udp";
}

const char* reason_name(CloseReason r) {
  switch (r) {
    case CloseReason::Fin:
      return "fin";
    case CloseReason::Rst:
      return "rst";
    case CloseReason::Timeout:
      return "timeout";
    case CloseReason::Evicted:
      return "evicted";
    case CloseReason::Shutdown:
      return "shutdown";
  }
  return "timeout";
}

namespace {

inline uint64_t mum(uint64_t a, uint64_t b) {
  unsigned __int128 r = static_cast<unsigned __int128>(a) * b;
  return uint64_t(r) ^ uint64_t(r >> 64);
}
inline uint32_t finalize(uint64_t h) {
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 32;
  return uint32_t(h);
}
constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ull;

uint32_t mask_of(int prefixLen) { return prefixLen == 0 ? 0 : ~uint32_t(0) << (32 - prefixLen); }

std::string dotted(uint32_t a) {
  return std::to_string(a >> 24) + "." + std::to_string((a >> 16) & 255) + "." + std::to_string((a >> 8) & 255) + "." +
         std::to_string(a & 255);
}

}  // namespace

std::string validate_table_config(const TableConfig& c) {
  if (c.prefixLen < 8 || c.prefixLen > 30)
    return "prefixLen " + std::to_string(c.prefixLen) + " is out of range: use a range between /8 and /30";
  uint32_t m = mask_of(c.prefixLen);
  if ((c.network & ~m) != 0)
    return "network " + dotted(c.network) + " is not the start of a /" + std::to_string(c.prefixLen) + ": use " +
           dotted(c.network & m) + "/" + std::to_string(c.prefixLen);
  uint32_t bcast = c.network | ~m;
  if ((c.gateway & m) != c.network || c.gateway == c.network || c.gateway == bcast)
    return "gateway " + dotted(c.gateway) + " must be a host address inside " + dotted(c.network) + "/" +
           std::to_string(c.prefixLen) + " (not the network or broadcast address)";
  if (c.maxFlows < 1 || c.maxFlows > (1u << 28))
    return "maxFlows " + std::to_string(c.maxFlows) + " is out of range: use 1..268435456";
  const Timeouts& t = c.timeouts;
  for (int64_t v : {t.tcpSynMs, t.tcpEstablishedMs, t.tcpFinMs, t.tcpClosedMs, t.udpMs, t.udpDnsMs})
    if (v <= 0) return "every timeout must be a positive number of milliseconds";
  if (c.reuseDelayMs < 0) return "reuseDelayMs must be >= 0";
  return "";
}

// ---------------------------------------------------------------- IndexTable
IndexTable::IndexTable() : slots_(1024, Slot{0, 0}), mask_(1023) {}

void IndexTable::insert(uint32_t h, uint32_t idx) {
  if ((count_ + 1) * 8 > slots_.size() * 5) grow();
  size_t i = h & mask_;
  while (slots_[i].idx1 != 0) i = (i + 1) & mask_;
  slots_[i] = Slot{idx + 1, h};
  count_++;
}

void IndexTable::erase(uint32_t h, uint32_t idx) {
  size_t i = h & mask_;
  for (;; i = (i + 1) & mask_) {
    if (slots_[i].idx1 == 0) return;  // not present
    if (slots_[i].idx1 == idx + 1) break;
  }
  // Backward-shift deletion: pull later members of the cluster into the hole
  // unless their home slot lies cyclically in (hole, j].
  size_t j = i;
  for (;;) {
    j = (j + 1) & mask_;
    if (slots_[j].idx1 == 0) break;
    size_t k = slots_[j].hash & mask_;
    bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
    if (!stays) {
      slots_[i] = slots_[j];
      i = j;
    }
  }
  slots_[i] = Slot{0, 0};
  count_--;
}

void IndexTable::grow() {
  std::vector<Slot> old(slots_.size() * 2, Slot{0, 0});
  old.swap(slots_);
  mask_ = slots_.size() - 1;
  for (const Slot& s : old) {
    if (s.idx1 == 0) continue;
    size_t i = s.hash & mask_;
    while (slots_[i].idx1 != 0) i = (i + 1) & mask_;
    slots_[i] = s;
  }
}

// ---------------------------------------------------------------- NatAllocator
void NatAllocator::init(uint32_t network, int prefixLen, uint32_t gateway, size_t cooldownCap, int64_t reuseDelayMs) {
  network_ = network;
  gateway_ = gateway;
  uint64_t size = uint64_t(1) << (32 - prefixLen);
  hosts_ = uint32_t(size - 3);  // minus network, broadcast, gateway
  // Start at a random point of the space: a daemon restarted within 60 s
  // would otherwise hand out the very pairs its predecessor left in
  // TIME_WAIT on the Listener side, and new connections stall on SYN
  // retransmits (DESIGN.md "Known traps"). One lap of a /16 is ~4·10⁹ pairs.
  std::random_device rd;
  const uint64_t r = (uint64_t(rd()) << 32) ^ rd();
  curHost_ = hosts_ ? uint32_t(r % hosts_) : 0;
  curPort_ = uint32_t((r >> 32) % kPorts);
  cap_ = std::max<size_t>(cooldownCap, 1);
  reuseDelayMs_ = reuseDelayMs;
  set_.assign(64, 0);
  setCount_ = 0;
  fifo_.clear();
}

uint32_t NatAllocator::host_addr(uint32_t i) const {
  uint32_t a = network_ + 1 + i;
  return a >= gateway_ ? a + 1 : a;
}

uint32_t NatAllocator::host_index(uint32_t a) const {
  if (a <= network_ || a == gateway_) return kNil;
  uint32_t i = a - network_ - 1;
  if (a > gateway_) i--;
  return i < hosts_ ? i : kNil;
}

template <class Live>
bool NatAllocator::next(int64_t now, Live live, uint32_t* addr, uint16_t* port, Counters& c) {
  purge(now);
  // Bound the walk: with a nearly full space, give up rather than spin.
  uint64_t tries = std::min<uint64_t>(space(), 1u << 16);
  for (uint64_t t = 0; t < tries; t++) {
    uint32_t h = curHost_, p = curPort_;
    if (++curHost_ == hosts_) {
      curHost_ = 0;
      if (++curPort_ == kPorts) curPort_ = 0;
    }
    uint32_t a = host_addr(h);
    uint16_t pp = uint16_t(p + kPortMin);
    if (!fifo_.empty() && cooling_contains(pack(h, pp))) continue;
    if (live(a, pp)) continue;
    *addr = a;
    *port = pp;
    return true;
  }
  bump(c.natExhausted);
  return false;
}

void NatAllocator::release(uint32_t addr, uint16_t port, int64_t now, Counters& c) {
  if (reuseDelayMs_ <= 0) return;
  uint32_t h = host_index(addr);
  if (h == kNil) return;
  purge(now);
  if (fifo_.size() >= cap_) {
    // More frees within reuseDelayMs than the table holds flows: forget the
    // oldest early. Only matters if the cursor can lap the space that fast.
    cooling_erase(fifo_.front().key);
    fifo_.pop_front();
    bump(c.cooldownOverflow);
  }
  uint64_t k = pack(h, port);
  fifo_.push_back(Cool{k, now});
  cooling_insert(k);
}

void NatAllocator::purge(int64_t now) {
  while (!fifo_.empty() && fifo_.front().freedMs + reuseDelayMs_ <= now) {
    cooling_erase(fifo_.front().key);
    fifo_.pop_front();
  }
}

namespace {
inline size_t key_slot(uint64_t k, size_t mask) { return size_t((k * kGolden) >> 20) & mask; }
}  // namespace

bool NatAllocator::cooling_contains(uint64_t k) const {
  size_t mask = set_.size() - 1;
  for (size_t i = key_slot(k, mask);; i = (i + 1) & mask) {
    if (set_[i] == 0) return false;
    if (set_[i] == k) return true;
  }
}

void NatAllocator::cooling_insert(uint64_t k) {
  if ((setCount_ + 1) * 2 > set_.size()) cooling_grow();
  size_t mask = set_.size() - 1;
  size_t i = key_slot(k, mask);
  for (; set_[i] != 0; i = (i + 1) & mask)
    if (set_[i] == k) return;
  set_[i] = k;
  setCount_++;
}

void NatAllocator::cooling_erase(uint64_t k) {
  size_t mask = set_.size() - 1;
  size_t i = key_slot(k, mask);
  for (;; i = (i + 1) & mask) {
    if (set_[i] == 0) return;
    if (set_[i] == k) break;
  }
  size_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    if (set_[j] == 0) break;
    size_t home = key_slot(set_[j], mask);
    bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
    if (!stays) {
      set_[i] = set_[j];
      i = j;
    }
  }
  set_[i] = 0;
  setCount_--;
}

void NatAllocator::cooling_grow() {
  std::vector<uint64_t> old(set_.size() * 2, 0);
  old.swap(set_);
  size_t mask = set_.size() - 1;
  for (uint64_t k : old) {
    if (k == 0) continue;
    size_t i = key_slot(k, mask);
    while (set_[i] != 0) i = (i + 1) & mask;
    set_[i] = k;
  }
}

// ---------------------------------------------------------------- FlowTable
FlowTable::FlowTable(const TableConfig& cfg, Counters& counters) : cfg_(cfg), c_(counters) {
  std::random_device rd;  // per-table seed: a LAN host cannot aim collisions at the index
  for (auto& s : seed_) s = (uint64_t(rd()) << 32 | rd()) | 1;
  allocTcp_.init(cfg.network, cfg.prefixLen, cfg.gateway, cfg.maxFlows, cfg.reuseDelayMs);
  allocUdp_.init(cfg.network, cfg.prefixLen, cfg.gateway, cfg.maxFlows, cfg.reuseDelayMs);
  update_gauges();
}

FlowTable::~FlowTable() = default;

uint32_t FlowTable::hash_fwd(const FlowKey& k) const {
  uint64_t w[5];
  std::memcpy(w, &k, sizeof w);
  uint64_t h = mum(w[0] ^ seed_[0], w[1] ^ seed_[1]) ^ mum(w[2] ^ seed_[2], w[3] ^ seed_[3]) ^
               mum(w[4] ^ seed_[1], seed_[0] ^ kGolden);
  return finalize(h);
}

uint32_t FlowTable::hash_nat(const NatKey& k) const {
  uint64_t w[3] = {0, 0, 0};
  std::memcpy(w, &k, sizeof k);
  return finalize(mum(w[0] ^ seed_[2], w[1] ^ seed_[3]) ^ mum(w[2] ^ seed_[0], seed_[1] ^ kGolden));
}

NatKey FlowTable::nat_key_of(const Flow& f) {
  NatKey k{};
  k.addr = f.nat;
  k.port = f.natPort;
  k.proto = f.key.proto;
  k.family = f.key.family;
  return k;
}

Flow* FlowTable::find(const FlowKey& k) {
  uint32_t i = fwd_.find(hash_fwd(k), [&](uint32_t x) { return at(x).key == k; });
  return i == kNil ? nullptr : &at(i);
}

Flow* FlowTable::find_nat(const NatKey& k) {
  uint32_t i = rev_.find(hash_nat(k), [&](uint32_t x) {
    const Flow& f = at(x);
    return f.natPort == k.port && f.key.proto == k.proto && f.nat == k.addr;
  });
  return i == kNil ? nullptr : &at(i);
}

uint32_t FlowTable::alloc_slot() {
  if (freeHead_ != kNil) {
    uint32_t i = freeHead_;
    freeHead_ = at(i).next;
    return i;
  }
  uint32_t i = used_++;
  if ((i >> kChunkShift) >= chunks_.size()) {
    // Default-initialised (Flow is trivial): pages are touched only as used.
    chunks_.emplace_back(new Flow[size_t(1) << kChunkShift]);
  }
  return i;
}

uint32_t FlowTable::list_for(const Flow& f) const {
  switch (f.state) {
    case FlowState::Syn:
      return 0;
    case FlowState::Established:
      return 1;
    case FlowState::Fin:
      return 2;
    case FlowState::Closed:
      return 3;
    case FlowState::Udp:
      return f.key.dport == 53 ? 5 : 4;
  }
  return 4;
}

int64_t FlowTable::timeout_of(const Flow& f) const {
  const Timeouts& t = cfg_.timeouts;
  switch (list_for(f)) {
    case 0:
      return t.tcpSynMs;
    case 1:
      return t.tcpEstablishedMs;
    case 2:
      return t.tcpFinMs;
    case 3:
      return t.tcpClosedMs;
    case 5:
      return t.udpDnsMs;
    default:
      return t.udpMs;
  }
}

void FlowTable::link_tail(uint32_t i, int64_t now) {
  Flow& f = at(i);
  uint32_t li = list_for(f);
  List& l = lists_[li];
  f.list = uint8_t(li);
  f.linkMs = std::min(now, f.lastSeenMs);
  f.next = kNil;
  f.prev = l.tail;
  if (l.tail != kNil)
    at(l.tail).next = i;
  else
    l.head = i;
  l.tail = i;
  if (li == 0) half_open_add(f, +1);
}

void FlowTable::unlink(uint32_t i) {
  Flow& f = at(i);
  if (f.list == kNoList) return;
  if (f.list == 0) half_open_add(f, -1);
  List& l = lists_[f.list];
  if (f.prev != kNil)
    at(f.prev).next = f.next;
  else
    l.head = f.next;
  if (f.next != kNil)
    at(f.next).prev = f.prev;
  else
    l.tail = f.prev;
  f.prev = f.next = kNil;
  f.list = kNoList;
}

void FlowTable::push_event(bool open, CloseReason r, const Flow& f) {
  if (events_.size() >= cfg_.maxQueuedEvents) {
    bump(c_.eventsDropped);
    return;
  }
  events_.push_back(FlowEvent{open, r, f});
}

void FlowTable::half_open_add(const Flow& f, int delta) {
  halfOpen_ = delta > 0 ? halfOpen_ + 1 : halfOpen_ - 1;
  setg(c_.halfOpenFlows, halfOpen_);
  if (cfg_.maxHalfOpenPerSource == 0) return;
  const uint32_t src = f.key.src.as_v4();
  if (delta > 0) {
    halfOpenBySrc_[src]++;
  } else {
    auto it = halfOpenBySrc_.find(src);
    if (it != halfOpenBySrc_.end() && --it->second == 0) halfOpenBySrc_.erase(it);
  }
}

uint32_t FlowTable::evict_victim() const { return lists_[3].head != kNil ? lists_[3].head : lists_[0].head; }

bool FlowTable::make_room(int64_t now) {
  // Early drop: a flow that is already over (both FINs or a RST, kept only
  // to translate the last retransmits) makes room, else the oldest
  // half-open one. Under a spoofed SYN flood the half-open flows are the
  // flood's own entries; a real handshake completes in well under a
  // millisecond, or if the flood keeps the TUN queue full, comes back as a
  // ghost (ghosts_). Under a flood from a real address its kernel answers
  // each SYN-ACK with a RST, so the flood's entries are closed ones.
  // Either way new connections keep getting in and established flows stay
  // untouched. The evicted pair still cools down (NatAllocator::release).
  const uint32_t victim = evict_victim();
  if (victim == kNil) return false;
  const Flow& v = at(victim);
  if (v.key.proto == kProtoTcp && v.state != FlowState::Closed && (v.tcpFlags & tcpflag::APP_NXT)) ghost_push(v, now);
  free_index(victim, CloseReason::Evicted, now);
  bump(c_.flowsEarlyDropped);
  return true;
}

void FlowTable::ghost_push(const Flow& f, int64_t now) {
  if (ghosts_.empty()) ghosts_.resize(kGhosts);
  if (ghostCount_ == kGhosts) ghost_pop();
  const uint32_t slot = (ghostHead_ + ghostCount_) % kGhosts;
  ghostCount_++;
  ghosts_[slot] = f;
  ghosts_[slot].linkMs = now;  // when it was dropped
  ghostIdx_.insert(hash_fwd(f.key), slot);
}

void FlowTable::ghost_pop() {
  Flow& g = ghosts_[ghostHead_];
  if (g.key.proto != 0) {
    if (evicted_.size() < kMaxEvictResets) {
      evicted_.push_back(g);
      evicted_.back().closeReason = CloseReason::Evicted;
    }
    ghost_kill(ghostHead_);
  }
  ghostHead_ = (ghostHead_ + 1) % kGhosts;
  ghostCount_--;
}

uint32_t FlowTable::ghost_find(const FlowKey& k) const {
  return ghostIdx_.find(hash_fwd(k), [&](uint32_t s) { return ghosts_[s].key == k; });
}

void FlowTable::ghost_kill(uint32_t slot) {
  ghostIdx_.erase(hash_fwd(ghosts_[slot].key), slot);
  ghosts_[slot].key.proto = 0;
}

Flow* FlowTable::revive(const FlowKey& k, int64_t now) {
  if (ghostCount_ == 0) return nullptr;
  const uint32_t slot = ghost_find(k);
  if (slot == kNil || ghosts_[slot].linkMs + kGhostMs <= now) return nullptr;  // too late: expire() resets it
  const Flow g = ghosts_[slot];
  ghost_kill(slot);
  if (find_nat(nat_key_of(g)) != nullptr) return nullptr;  // the pair went to another flow meanwhile
  if (size_ >= cfg_.maxFlows && !make_room(now)) return nullptr;
  const uint32_t i = alloc_slot();
  Flow& f = at(i);
  f = g;
  f.self = i;
  f.list = kNoList;
  f.prev = f.next = kNil;
  f.id = nextId_++;
  f.lastSeenMs = now;
  fwd_.insert(hash_fwd(f.key), i);
  rev_.insert(hash_nat(nat_key_of(f)), i);
  link_tail(i, now);
  size_++;
  tcp_++;
  bump(c_.flowsCreated);
  bump(c_.flowsRevived);
  f.tcpFlags &= uint8_t(~tcpflag::REPORTED);  // half-open: reported once its handshake completes
  update_gauges();
  return &f;
}

bool FlowTable::first_syn_held(const FlowKey& k, int64_t now) {
  const uint32_t victim = evict_victim();
  if (victim == kNil || now - at(victim).createdMs >= kEvictGraceMs) return false;
  uint64_t w[5];
  std::memcpy(w, &k, sizeof w);
  uint64_t h = mum(w[0] ^ seed_[3], w[1] ^ seed_[2]) ^ mum(w[2] ^ seed_[1], w[3] ^ seed_[0]) ^
               mum(w[4] ^ seed_[2], seed_[3] ^ kGolden);
  h = mum(h, kGolden);
  if (synMemory_.empty()) synMemory_.resize(size_t(1) << kSynMemoryBits);
  uint64_t& slot = synMemory_[h & ((uint64_t(1) << kSynMemoryBits) - 1)];
  const uint64_t fp = (h >> 32) | 1;  // never 0: an empty slot matches nothing
  const uint32_t ms = uint32_t(now);
  if ((slot >> 32) == fp && int64_t(uint32_t(ms - uint32_t(slot))) < kSynMemoryMs) return false;  // retransmitted
  slot = fp << 32 | ms;
  return true;
}

Flow* FlowTable::create(const FlowKey& k, Target target, int64_t now, Create* why, bool synGate) {
  if (k.proto == kProtoTcp && cfg_.maxHalfOpenPerSource != 0) {
    auto it = halfOpenBySrc_.find(k.src.as_v4());
    if (it != halfOpenBySrc_.end() && it->second >= cfg_.maxHalfOpenPerSource) {
      bump(c_.halfOpenCapped);
      *why = Create::HalfOpenCap;
      return nullptr;
    }
  }
  if (ghostCount_ != 0) {
    const uint32_t g = ghost_find(k);  // the app starts over on this 4-tuple: the old attempt is gone
    if (g != kNil) ghost_kill(g);
  }
  if (size_ >= cfg_.maxFlows && synGate && first_syn_held(k, now)) {
    bump(c_.firstSynDropped);
    *why = Create::FirstSyn;
    return nullptr;
  }
  if (size_ >= cfg_.maxFlows && !make_room(now)) {
    *why = Create::Full;
    return nullptr;
  }
  NatAllocator& al = alloc_for(k.proto);
  auto live = [&](uint32_t a, uint16_t p) { return find_nat(NatKey::v4(a, p, k.proto)) != nullptr; };
  uint32_t addr;
  uint16_t port;
  if (!al.next(now, live, &addr, &port, c_)) {
    *why = Create::Exhausted;
    return nullptr;
  }
  uint32_t i = alloc_slot();
  Flow& f = at(i);
  std::memset(&f, 0, sizeof f);
  f.key = k;
  f.nat = IpAddr::v4(addr);
  f.natPort = port;
  f.state = k.proto == kProtoTcp ? FlowState::Syn : FlowState::Udp;
  f.target = target;
  f.closeReason = CloseReason::Timeout;
  f.self = i;
  f.list = kNoList;
  f.id = nextId_++;
  f.createdMs = f.lastSeenMs = now;
  fwd_.insert(hash_fwd(k), i);
  rev_.insert(hash_nat(nat_key_of(f)), i);
  link_tail(i, now);
  size_++;
  if (k.proto == kProtoTcp) tcp_++;
  bump(c_.flowsCreated);
  if (k.proto != kProtoTcp) report_open(f);
  update_gauges();
  *why = Create::Ok;
  return &f;
}

void FlowTable::touch(Flow* f, int64_t now) {
  if (now > f->lastSeenMs) f->lastSeenMs = now;
  if (now - f->linkMs >= kRelinkMs) {
    unlink(f->self);
    link_tail(f->self, now);
  }
}

void FlowTable::report_open(Flow& f) {
  f.tcpFlags |= tcpflag::REPORTED;
  push_event(true, CloseReason::Timeout, f);
}

void FlowTable::set_state(Flow* f, FlowState s, int64_t now) {
  if (f->state == s) return;
  f->state = s;
  if (s != FlowState::Closed && !(f->tcpFlags & tcpflag::REPORTED)) report_open(*f);
  if (list_for(*f) != f->list) {
    unlink(f->self);
    link_tail(f->self, now);
  }
}

void FlowTable::free_index(uint32_t i, CloseReason reason, int64_t now) {
  Flow& f = at(i);
  if (f.tcpFlags & tcpflag::REPORTED) push_event(false, reason, f);
  fwd_.erase(hash_fwd(f.key), i);
  rev_.erase(hash_nat(nat_key_of(f)), i);
  unlink(i);
  alloc_for(f.key.proto).release(f.nat.as_v4(), f.natPort, now, c_);
  if (f.key.proto == kProtoTcp) tcp_--;
  size_--;
  bump(reason == CloseReason::Timeout ? c_.flowsExpired : c_.flowsClosed);
  f.next = freeHead_;
  freeHead_ = i;
}

void FlowTable::remove(Flow* f, CloseReason reason, int64_t now) {
  free_index(f->self, reason, now);
  update_gauges();
}

void FlowTable::expire(int64_t now, std::vector<Flow>* timedOut) {
  while (ghostCount_ != 0 && (ghosts_[ghostHead_].key.proto == 0 || ghosts_[ghostHead_].linkMs + kGhostMs <= now))
    ghost_pop();
  if (timedOut != nullptr) timedOut->insert(timedOut->end(), evicted_.begin(), evicted_.end());
  evicted_.clear();
  for (uint32_t li = 0; li < kLists; li++) {
    while (lists_[li].head != kNil) {
      uint32_t i = lists_[li].head;
      Flow& f = at(i);
      if (f.lastSeenMs + timeout_of(f) > now) break;
      if (timedOut != nullptr && f.key.proto == kProtoTcp && f.state != FlowState::Closed &&
          (f.tcpFlags & tcpflag::APP_NXT))
        timedOut->push_back(f);
      free_index(i, f.state == FlowState::Closed ? f.closeReason : CloseReason::Timeout, now);
    }
  }
  allocTcp_.purge(now);
  allocUdp_.purge(now);
  update_gauges();
}

void FlowTable::clear(int64_t now) {
  for (uint32_t li = 0; li < kLists; li++)
    while (lists_[li].head != kNil) free_index(lists_[li].head, CloseReason::Shutdown, now);
  update_gauges();
}

size_t FlowTable::memory_bytes() const {
  // unordered_map node: key, value, next pointer, cached hash (+ bucket slot).
  constexpr size_t kMapNode = 4 * sizeof(void*);
  return size_t(used_) * sizeof(Flow) + fwd_.bytes() + rev_.bytes() + allocTcp_.bytes() + allocUdp_.bytes() +
         chunks_.capacity() * sizeof(void*) + halfOpenBySrc_.size() * kMapNode +
         halfOpenBySrc_.bucket_count() * sizeof(void*) + ghosts_.capacity() * sizeof(Flow) + ghostIdx_.bytes() +
         synMemory_.capacity() * sizeof(uint64_t);
}

void FlowTable::update_gauges() {
  setg(c_.flowsActive, size_);
  setg(c_.tcpFlows, tcp_);
  setg(c_.udpFlows, size_ - tcp_);
  setg(c_.memoryBytes, memory_bytes());
  setg(c_.cooldownPairs, allocTcp_.cooling() + allocUdp_.cooling());
  setg(c_.halfOpenFlows, halfOpen_);
}

}  // namespace fp
