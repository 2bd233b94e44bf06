#include "tests/powerloss/model.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

namespace ckpt::powerloss {

namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kBlock = 4096;
constexpr std::size_t kNever = std::numeric_limits<std::size_t>::max();

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// (device, inode) of each file scanned → its node: hard links are one node.
using Inodes = std::map<std::pair<dev_t, ino_t>, int>;

void scan(Image& image, int node, const fs::path& dir, Inodes& inodes) {
  for (const auto& e : fs::directory_iterator(dir)) {
    auto st = e.symlink_status();
    if (fs::is_regular_file(st)) {
      struct stat s {};
      if (::lstat(e.path().c_str(), &s) != 0) throw std::runtime_error("cannot stat " + e.path().string());
      auto [it, fresh] = inodes.try_emplace({s.st_dev, s.st_ino}, static_cast<int>(image.size()));
      if (!fresh) {
        image[node].entries[e.path().filename().string()] = it->second;
        continue;
      }
    }
    int id = static_cast<int>(image.size());
    image.emplace_back();
    image[id].name = (image[node].name.empty() ? "" : image[node].name + "/") +
                     e.path().filename().string();
    image[node].entries[e.path().filename().string()] = id;
    if (fs::is_directory(st)) {
      image[id].dir = true;
      scan(image, id, e.path(), inodes);
    } else if (fs::is_regular_file(st)) {
      image[id].data = slurp(e.path().string());
    } else {
      throw std::runtime_error("not a file or directory: " + e.path().string());
    }
  }
}

// The replay's view of the namespace: paths relative to the root → nodes.
struct Namespace {
  Image& nodes;
  std::string root;

  std::vector<std::string> parts(const std::string& abs) const {
    if (abs.compare(0, root.size(), root) != 0) throw std::runtime_error("outside the root: " + abs);
    std::vector<std::string> out;
    std::stringstream s(abs.substr(root.size()));
    for (std::string p; std::getline(s, p, '/');)
      if (!p.empty()) out.push_back(p);
    return out;
  }
  int lookup(const std::vector<std::string>& p, std::size_t n) const {
    int cur = 0;
    for (std::size_t i = 0; i < n; ++i) {
      auto it = nodes[cur].entries.find(p[i]);
      if (it == nodes[cur].entries.end()) return -1;
      cur = it->second;
    }
    return cur;
  }
  int node(const std::string& abs) const {
    auto p = parts(abs);
    return lookup(p, p.size());
  }
  // (parent node, name) of a path below the root.
  std::pair<int, std::string> parent(const std::string& abs) const {
    auto p = parts(abs);
    if (p.empty()) throw std::runtime_error("an entry operation on the root itself");
    int d = lookup(p, p.size() - 1);
    if (d < 0) throw std::runtime_error("no parent directory in the replay: " + abs);
    return {d, p.back()};
  }
  std::string rel(const std::string& abs) const {
    return abs.size() > root.size() ? abs.substr(root.size() + 1) : std::string(".");
  }
};

int must(int node, const std::string& what) {
  if (node < 0) throw std::runtime_error("replay: unknown " + what);
  return node;
}

}  // namespace

Image read_image(const std::string& root) {
  Image image(1);
  image[0].dir = true;
  Inodes inodes;
  scan(image, 0, root, inodes);
  return image;
}

Recording replay(Image base, const std::string& root, const std::string& log, std::string blob) {
  Recording rec;
  Image vol = base;  // the namespace as the program saw it
  Namespace ns{vol, root};
  std::unordered_map<int, int> fds;
  std::unordered_map<std::string, std::size_t> syncs;  // fsync id → index into ops of its begin
  std::unordered_map<std::string, int> sync_node;
  auto new_node = [&](bool dir, const std::string& abs) {
    vol.emplace_back();
    vol.back().dir = dir;
    base.emplace_back();
    base.back().dir = dir;
    base.back().name = ns.rel(abs);
    return static_cast<int>(vol.size() - 1);
  };
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    if (line.size() < 2) continue;
    char kind = line[0];
    std::string rest = line.substr(2);
    std::istringstream in(rest);
    Op op;
    switch (kind) {
      case 'O': {
        int fd = 0, created = 0, truncated = 0;
        in >> fd >> created >> truncated;
        std::string path;
        std::getline(in >> std::ws, path);
        if (created) {
          auto [d, name] = ns.parent(path);
          int id = new_node(false, path);
          vol[d].entries[name] = id;
          rec.ops.push_back(Op{OpKind::create, d, -1, name, {}, id});
        }
        int id = must(ns.node(path), "opened path " + path);
        fds[fd] = id;
        if (truncated) {
          op.kind = OpKind::trunc;
          op.node = id;
          rec.ops.push_back(op);
        }
        continue;
      }
      case 'C': {
        int fd = 0;
        in >> fd;
        fds.erase(fd);
        continue;
      }
      case 'W':
      case 'T': {
        int fd = 0;
        in >> fd;
        if (!fds.contains(fd)) throw std::runtime_error("replay: write to unknown fd: " + line);
        op.node = fds[fd];
        if (kind == 'W') {
          op.kind = OpKind::write;
          in >> op.offset >> op.length >> op.data_at;
        } else {
          op.kind = OpKind::trunc;
          in >> op.length;
        }
        break;
      }
      case 'B': {
        std::string id;
        int fd = 0;
        in >> id >> fd;
        if (!fds.contains(fd)) throw std::runtime_error("replay: fsync of unknown fd: " + line);
        syncs[id] = rec.ops.size();
        sync_node[id] = fds[fd];
        continue;
      }
      case 'Y': {
        std::string id;
        in >> id;
        syncs[id] = rec.ops.size();
        sync_node[id] = -1;
        continue;
      }
      case 'E':
      case 'Z': {
        std::string id;
        in >> id;
        op.kind = kind == 'E' ? OpKind::fsync : OpKind::sync_all;
        op.begin = syncs.at(id);
        op.node = sync_node.at(id);
        break;
      }
      case 'F':
        continue;
      case 'M': {
        auto [d, name] = ns.parent(rest);
        int id = new_node(true, rest);
        vol[d].entries[name] = id;
        op = Op{OpKind::mkdir, d, -1, name, {}, id};
        break;
      }
      case 'R': {
        unsigned flags = 0;
        in >> flags;
        std::string paths;
        std::getline(in >> std::ws, paths);
        auto tab = paths.find('\t');
        std::string a = paths.substr(0, tab), b = paths.substr(tab + 1);
        auto [da, na] = ns.parent(a);
        auto [db, nb] = ns.parent(b);
        op = Op{OpKind::rename, da, db, na, nb, must(ns.node(a), "rename source " + a)};
        op.flags = flags;
        op.src = ns.rel(a);
        op.text = ns.rel(a) + " -> " + ns.rel(b);
        if (flags & RENAME_EXCHANGE) {
          op.node2 = must(ns.node(b), "exchange target " + b);
          vol[da].entries[na] = op.node2;
          vol[db].entries[nb] = op.node;
        } else {
          vol[da].entries.erase(na);
          vol[db].entries[nb] = op.node;
        }
        break;
      }
      case 'L': {
        auto tab = rest.find('\t');
        if (tab == std::string::npos) throw std::runtime_error("bad trace line: " + line);
        std::string a = rest.substr(0, tab), b = rest.substr(tab + 1);
        auto [d, name] = ns.parent(b);
        op = Op{OpKind::link, d, -1, name, {}, must(ns.node(a), "link source " + a)};
        if (vol[op.node].dir) throw std::runtime_error("replay: a hard link to a directory: " + a);
        op.text = ns.rel(a) + " -> " + ns.rel(b);
        vol[d].entries[name] = op.node;
        break;
      }
      case 'U':
      case 'D': {
        auto [d, name] = ns.parent(rest);
        op = Op{kind == 'U' ? OpKind::unlink : OpKind::rmdir, d, -1, name, {},
                must(ns.node(rest), "removed path " + rest)};
        vol[d].entries.erase(name);
        break;
      }
      case 'K':
        op.kind = OpKind::mark;
        op.text = rest;
        break;
      case 'X':
        throw std::runtime_error("the trace holds an operation the model does not cover: " + rest);
      default:
        throw std::runtime_error("bad trace line: " + line);
    }
    rec.ops.push_back(std::move(op));
  }
  rec.base = std::move(base);
  rec.blob = std::move(blob);
  return rec;
}

std::string describe(const Recording& rec, const Op& op) {
  auto node = [&](int n) { return n >= 0 ? rec.base[static_cast<std::size_t>(n)].name : "?"; };
  switch (op.kind) {
    case OpKind::create: return "create " + node(op.node);
    case OpKind::mkdir: return "mkdir " + node(op.node);
    case OpKind::link: return "link " + op.text;
    case OpKind::rename:
      return std::string(op.flags & RENAME_EXCHANGE ? "exchange " : "rename ") + op.text;
    case OpKind::unlink: return "unlink " + node(op.dir) + "/" + op.name;
    case OpKind::rmdir: return "rmdir " + node(op.dir) + "/" + op.name;
    case OpKind::write:
      return "write " + node(op.node) + " [" + std::to_string(op.offset) + ", +" +
             std::to_string(op.length) + ")";
    case OpKind::trunc: return "truncate " + node(op.node) + " to " + std::to_string(op.length);
    case OpKind::fsync: return "fsync " + (op.node == 0 ? std::string(".") : node(op.node));
    case OpKind::sync_all: return "sync";
    case OpKind::mark: return "mark " + op.text;
  }
  return "?";
}

CrashStates::CrashStates(const Recording& rec) : rec_(rec), forced_at_(rec.ops.size(), kNever) {
  const auto& ops = rec.ops;
  // The first completed sync (by index) that covers op i through node `n`.
  auto first_sync = [&](std::size_t i, int n, bool data) {
    for (std::size_t j = i + 1; j < ops.size(); ++j) {
      const Op& s = ops[j];
      if (s.begin <= i) continue;
      if (s.kind == OpKind::sync_all) return j;
      if (s.kind == OpKind::fsync && s.node == n && rec.base[n].dir != data) return j;
    }
    return kNever;
  };
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const Op& op = ops[i];
    switch (op.kind) {
      case OpKind::write:
      case OpKind::trunc: forced_at_[i] = first_sync(i, op.node, true); break;
      case OpKind::rename:
        forced_at_[i] = first_sync(i, op.dir, false);
        if (op.dir2 != op.dir) forced_at_[i] = std::max(forced_at_[i], first_sync(i, op.dir2, false));
        break;
      case OpKind::create:
      case OpKind::mkdir:
      case OpKind::link:
      case OpKind::unlink:
      case OpKind::rmdir: forced_at_[i] = first_sync(i, op.dir, false); break;
      default: forced_at_[i] = 0; break;  // no state of its own
    }
  }
}

std::vector<CrashStates::Unit> CrashStates::units(std::size_t k) const {
  std::vector<Unit> out;
  for (std::size_t i = 0; i < k; ++i) {
    const Op& op = rec_.ops[i];
    if (forced(i, k)) continue;
    if (op.kind == OpKind::write) {
      for (std::uint64_t b = op.offset; b < op.offset + op.length;) {
        std::uint64_t e = std::min(op.offset + op.length, (b / kBlock + 1) * kBlock);
        out.push_back(Unit{i, b, e});
        b = e;
      }
    } else {
      out.push_back(Unit{i, 0, 0});
    }
  }
  return out;
}

std::vector<std::vector<bool>> CrashStates::choices(const std::vector<Unit>& units, std::size_t cap,
                                                    std::mt19937_64& rng) const {
  const std::size_t n = units.size();
  std::vector<std::vector<bool>> out;
  if (n < 20 && (std::size_t{1} << n) <= cap) {  // few enough: every subset
    for (std::size_t m = 0; m < (std::size_t{1} << n); ++m) {
      std::vector<bool> c(n);
      for (std::size_t u = 0; u < n; ++u) c[u] = (m >> u) & 1;
      out.push_back(std::move(c));
    }
    return out;
  }
  out.emplace_back(n, true);   // what a killed process leaves
  out.emplace_back(n, false);  // only what was forced
  // Each entry operation alone lost, and alone kept; each file's unsynced blocks all lost, all
  // kept, and one of them lost.
  std::vector<std::vector<bool>> singles;
  std::map<int, std::vector<std::size_t>> blocks;
  for (std::size_t u = 0; u < n; ++u) {
    const Op& op = rec_.ops[units[u].op];
    if (op.kind == OpKind::write) {
      blocks[op.node].push_back(u);
      continue;
    }
    std::vector<bool> lost(n, true), kept(n, false);
    lost[u] = false;
    kept[u] = true;
    singles.push_back(std::move(lost));
    singles.push_back(std::move(kept));
  }
  for (const auto& [node, us] : blocks) {
    std::vector<bool> lost(n, true), kept(n, false), one(n, true);
    for (auto u : us) lost[u] = false, kept[u] = true;
    one[us[rng() % us.size()]] = false;
    singles.push_back(std::move(lost));
    singles.push_back(std::move(kept));
    singles.push_back(std::move(one));
  }
  std::shuffle(singles.begin(), singles.end(), rng);
  std::size_t room = cap > out.size() + 4 ? cap - out.size() - 4 : 0;
  for (std::size_t i = 0; i < singles.size() && i < room; ++i) out.push_back(std::move(singles[i]));
  while (out.size() < cap) {  // random subsets
    std::vector<bool> c(n);
    for (std::size_t u = 0; u < n; ++u) c[u] = rng() & 1;
    out.push_back(std::move(c));
  }
  return out;
}

Image CrashStates::build(std::size_t k, const std::vector<Unit>& units,
                         const std::vector<bool>& persisted) const {
  Image img = rec_.base;
  std::size_t u = 0;
  for (std::size_t i = 0; i < k; ++i) {
    const Op& op = rec_.ops[i];
    const bool forced_op = forced(i, k);
    auto kept = [&] {
      if (forced_op) return true;
      return persisted[u++];
    };
    switch (op.kind) {
      case OpKind::write: {
        for (std::uint64_t b = op.offset; b < op.offset + op.length;) {
          std::uint64_t e = std::min(op.offset + op.length, (b / kBlock + 1) * kBlock);
          if (kept()) {
            std::string& d = img[op.node].data;
            if (d.size() < e) d.resize(e, '\0');
            d.replace(b, e - b, rec_.blob, op.data_at + (b - op.offset), e - b);
          }
          b = e;
        }
        break;
      }
      case OpKind::trunc:
        if (kept()) img[op.node].data.resize(op.length, '\0');
        break;
      case OpKind::create:
      case OpKind::mkdir:
      case OpKind::link:  // a new name of an existing node: its data is the node's
        if (kept() && !img[op.dir].entries.contains(op.name)) img[op.dir].entries[op.name] = op.node;
        break;
      case OpKind::unlink:
      case OpKind::rmdir: {
        if (!kept()) break;
        auto& e = img[op.dir].entries;
        auto it = e.find(op.name);
        if (it != e.end() && it->second == op.node &&
            (op.kind == OpKind::unlink || img[op.node].entries.empty())) {
          e.erase(it);
        }
        break;
      }
      case OpKind::rename: {
        if (!kept()) break;
        auto& src = img[op.dir].entries;
        auto& dst = img[op.dir2].entries;
        auto s = src.find(op.name);
        if (s == src.end() || s->second != op.node) break;  // its source never persisted
        auto d = dst.find(op.name2);
        if (op.flags & RENAME_EXCHANGE) {
          if (d == dst.end() || d->second != op.node2) break;
          std::swap(s->second, d->second);
          break;
        }
        if (d != dst.end() && ((op.flags & RENAME_NOREPLACE) ||
                               (img[d->second].dir && !img[d->second].entries.empty()))) {
          break;
        }
        src.erase(s);
        img[op.dir2].entries[op.name2] = op.node;
        break;
      }
      default: break;
    }
  }
  if (u != units.size()) throw std::logic_error("crash state built from the wrong units");
  return img;
}

void materialize(const Image& image, const std::string& dir) {
  std::function<void(int, const fs::path&)> write = [&](int node, const fs::path& path) {
    const Node& n = image[node];
    if (n.dir) {
      fs::create_directory(path);
      for (const auto& [name, child] : n.entries) write(child, path / name);
      return;
    }
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) throw std::runtime_error("cannot create " + path.string());
    std::size_t done = 0;
    while (done < n.data.size()) {
      ssize_t w = ::write(fd, n.data.data() + done, n.data.size() - done);
      if (w <= 0) break;
      done += static_cast<std::size_t>(w);
    }
    ::close(fd);
    if (done != n.data.size()) throw std::runtime_error("cannot write " + path.string());
  };
  write(0, dir);
}

std::uint64_t digest(const Image& image) {
  std::string s;
  std::function<void(int)> walk = [&](int node) {
    const Node& n = image[node];
    if (!n.dir) {
      s += "f" + std::to_string(std::hash<std::string>{}(n.data)) + ":" + std::to_string(n.data.size());
      return;
    }
    s += "d{";
    for (const auto& [name, child] : n.entries) {
      s += name + "=";
      walk(child);
      s += ",";
    }
    s += "}";
  };
  walk(0);
  return std::hash<std::string>{}(s);
}

}  // namespace ckpt::powerloss
