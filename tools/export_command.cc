// `ckpt export SRC DST`: a self-contained copy of a checkpoint (runtime/incremental.h).
#include <fmt/format.h>

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include "runtime/checkpoint.h"
#include "runtime/incremental.h"
#include "tools/commands.h"
#include "tools/format.h"

namespace ckpt::tools {

int run_export(const std::string& src, const std::string& dst, bool json) {
  require_directory(src, "checkpoint directory");
  export_checkpoint(src, dst);
  Manifest m = read_manifest(dst);
  if (json) {
    boost::json::object doc{{"source", src},
                            {"path", dst},
                            {"total_bytes", m.total_bytes},
                            {"stored_bytes", m.stored_bytes()}};
    fmt::print("{}\n", boost::json::serialize(doc));
  } else {
    fmt::print("exported {} to {} ({} of data, every block verified)\n", src, dst,
               human_bytes(m.stored_bytes()));
  }
  return kExitOk;
}

}  // namespace ckpt::tools
