{
  "targets": [
    {
      "target_name": "fakeproxy",
      "sources": [
        "native/addon.cc",
        "native/tun.cc",
        "native/checksum.cc",
        "native/flow_table.cc",
        "native/engine.cc",
        "native/read_ring.cc",
        "native/engine_addon.cc",
        "native/dgram_batch.cc",
        "native/dgram_batch_addon.cc",
        "native/fake_answers.cc",
        "native/relay.cc",
        "native/relay_addon.cc",
        "native/udp_relay.cc",
        "native/udp_relay_addon.cc",
        "native/mark_addon.cc",
        "native/accept_addon.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
      
      "conditions": [["OS!='linux'", {"sources": []}]]
    }
  ]
}
