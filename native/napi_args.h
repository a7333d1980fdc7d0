// The N-API shapes every addon class would otherwise write again: the
// options-object argument of a constructor, integer arguments and options, stopping
// a wrapper's native threads when Node tears the environment down (worker
// exit) before JS collected the wrapper, and the lifetime of a native core
// whose threads signal JS through a ThreadSafeFunction.
#pragma once

#include <napi.h>

#include <cerrno>
#include <cstdint>
#include <memory>
#include <string>

#include "napi_errors.h"

namespace fakeproxy {

// info[0] an object (and, with `callback`, info[1] a function): *out is the
// object. Else throws a TypeError with `usage` and returns false.
inline bool OptionsArg(const Napi::CallbackInfo& info, bool callback, const char* usage, Napi::Object* out) {
  size_t need = callback ? 2 : 1;
  if (info.Length() < need || !info[0].IsObject() || (callback && !info[1].IsFunction())) {
    ThrowArg(info.Env(), usage);
    return false;
  }
  *out = info[0].As<Napi::Object>();
  return true;
}

// v a JS number that is a whole number in [lo, hi]; false for anything else
// (not a number, NaN, a fraction, out of range).
inline bool IntegerIn(const Napi::Value& v, double lo, double hi, double* out) {
  if (!v.IsNumber()) return false;
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= lo && d <= hi) || d != static_cast<double>(static_cast<int64_t>(d))) return false;
  *out = d;
  return true;
}

// o[key] a whole number in [lo, hi] into *out; with `optional`, an absent
// key leaves *out (its default) as it is. Else throws a TypeError
// "<who>: <key> must be an integer in [lo, hi]" and returns false.
inline bool IntegerOption(Napi::Env env, const Napi::Object& o, const char* who, const char* key, double lo, double hi,
                          double* out, bool optional = false) {
  Napi::Value v = o.Get(key);
  if (optional && v.IsUndefined()) return true;
  if (IntegerIn(v, lo, hi, out)) return true;
  ThrowArg(env, std::string(who) + ": " + key + " must be an integer in [" + std::to_string(static_cast<int64_t>(lo)) +
                    ", " + std::to_string(static_cast<int64_t>(hi)) + "]");
  return false;
}

// Calls (self->*Teardown)() once if the environment is torn down while the
// wrapper lives; the wrapper's destructor tears down itself and then calls
// Disarm(). Teardown must be safe to call twice.
template <class T, void (T::*Teardown)()>
class EnvTeardown {
 public:
  void Arm(Napi::Env env, T* self) {
    self_ = self;
    hook_ = env.AddCleanupHook(&EnvTeardown::Run, this);
    active_ = true;
  }
  void Disarm(Napi::Env env) {
    if (!active_) return;
    hook_.Remove(env);
    active_ = false;
  }

 private:
  static void Run(EnvTeardown* h) {
    h->active_ = false;
    (h->self_->*Teardown)();
  }
  Napi::Env::CleanupHook<void (*)(EnvTeardown*), EnvTeardown> hook_;
  T* self_ = nullptr;
  bool active_ = false;
};

// The native core of a wrapper whose threads signal JS through a
// ThreadSafeFunction (Relay, UdpRelay). The core's threads are stopped
// before the callback goes: in the wrapper's stop(), its destructor, and
// when the environment ends first.
template <class Core>
class ThreadedCore {
 public:
  // Makes the callback `fn` (`name` shows in diagnostics), then the core
  // `make(notify)` returns; the core calls `notify` from its threads to have
  // `deliver(env, fn)` run on the JS thread.
  template <class MakeCore, class Deliver>
  void Create(Napi::Env env, const Napi::Value& fn, const char* name, MakeCore make, Deliver deliver) {
    tsfn_ = Napi::ThreadSafeFunction::New(env, fn.As<Napi::Function>(), name, 0, 1);
    core_ =
        make([this, deliver] { tsfn_.NonBlockingCall([deliver](Napi::Env e, Napi::Function f) { deliver(e, f); }); });
  }
  // Once the core started: tear it down if the environment ends first.
  void Arm(Napi::Env env) { teardown_.Arm(env, this); }
  // For the wrapper's destructor.
  void Destroy(Napi::Env env) {
    Teardown();
    teardown_.Disarm(env);
  }
  // Stops the core's threads, then drops the callback and the core. Idempotent.
  void Teardown() {
    if (!core_) return;
    core_->Stop();
    Release();
  }
  // Drops the callback and the core, whose threads do not run (stopped, or
  // never started).
  void Release() {
    tsfn_.Abort();
    core_.reset();
  }
  // True while the core lives; else throws ESHUTDOWN ("`what` is stopped: …").
  bool Ready(Napi::Env env, const char* syscall, const char* what) const {
    if (core_) return true;
    ThrowSys(env, ESHUTDOWN, syscall, std::string(what) + " is stopped: create a new one");
    return false;
  }
  explicit operator bool() const { return core_ != nullptr; }
  Core* operator->() const { return core_.get(); }
  Napi::ThreadSafeFunction& tsfn() { return tsfn_; }

 private:
  std::unique_ptr<Core> core_;
  Napi::ThreadSafeFunction tsfn_;
  EnvTeardown<ThreadedCore, &ThreadedCore::Teardown> teardown_;
};

// exports.layout[key] = value: the sizes of the records and the lengths of
// the enums this addon shares with TypeScript, which src/native.ts checks
// against its own when it loads the addon (a stale build fails there, by
// name, instead of misreading records).
inline void SetLayout(Napi::Env env, Napi::Object exports, const char* key, uint32_t value) {
  Napi::Value v = exports.Get("layout");
  Napi::Object o = v.IsObject() ? v.As<Napi::Object>() : Napi::Object::New(env);
  if (!v.IsObject()) exports.Set("layout", o);
  o.Set(key, Napi::Number::New(env, value));
}

}  // namespace fakeproxy
