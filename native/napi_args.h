// The N-API shapes every addon class would otherwise write again: the
// options-object argument of a constructor, integer arguments, and stopping
// a wrapper's native threads when Node tears the environment down (worker
// exit) before JS collected the wrapper.
#pragma once

#include <napi.h>

#include <cstdint>

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

}  // namespace fakeproxy
