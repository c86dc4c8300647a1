// Freed memory blocks kept by exact size for the next allocation of that size: the free lists of
// the CPU block cache (core/tensor.cpp) and of the CUDA caching allocator and its graph pools
// (core/cuda_device.cu). Each list knows the bytes it holds, so its owner's totals cannot drift
// from what it can actually hand back. Not locked: the owners hold their own mutex around it.
#pragma once
#include <cstddef>
#include <unordered_map>
#include <utility>
#include <vector>

namespace fastnn {

class FreeBlocks {
 public:
  // A block of exactly `bytes`, or nullptr when none is kept.
  void* take(size_t bytes) {
    auto it = lists_.find(bytes);
    if (it == lists_.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    bytes_ -= bytes;
    return p;
  }

  // Keeps `p` (of `bytes`). Throws std::bad_alloc, keeping nothing, when the list entry cannot be made.
  void put(void* p, size_t bytes) {
    lists_[bytes].push_back(p);
    bytes_ += bytes;
  }

  // Hands blocks to release(p, bytes), in no particular order, until at most `keep` bytes remain.
  template <class Release>
  void release_until(size_t keep, Release&& release) {
    for (auto it = lists_.begin(); bytes_ > keep && it != lists_.end(); ++it) {
      while (!it->second.empty() && bytes_ > keep) {
        release(it->second.back(), it->first);
        it->second.pop_back();
        bytes_ -= it->first;
      }
    }
  }

  template <class Release>
  void release_all(Release&& release) {
    release_until(0, std::forward<Release>(release));
    lists_.clear();
  }

  // Moves every block of `other` here. Throws std::bad_alloc only before moving anything of a size.
  void absorb(FreeBlocks& other) {
    for (auto& [bytes, list] : other.lists_) {
      auto& mine = lists_[bytes];
      mine.insert(mine.end(), list.begin(), list.end());
      bytes_ += bytes * list.size();
      other.bytes_ -= bytes * list.size();
      list.clear();
    }
    other.lists_.clear();
  }

  size_t bytes() const { return bytes_; }

 private:
  std::unordered_map<size_t, std::vector<void*>> lists_;
  size_t bytes_ = 0;
};

}  // namespace fastnn
