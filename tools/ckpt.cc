// ckpt: the command-line tool for checkpoints written by the ckpt runtime.
//
//   ckpt list RUN_DIR [--json]           committed checkpoints, '*' marks the one `latest` names
//   ckpt inspect CHECKPOINT [--json]     manifest, metadata, files and leaves of one checkpoint
//   ckpt verify PATH [--json] [--engine auto|uring|threads]
//                                        every checksum of a checkpoint, or of every checkpoint
//                                        of a run directory
//   ckpt latest RUN_DIR                  the suffix `latest` names
//   ckpt gc RUN_DIR --keep N [--keep-period P] [--best-metric KEY --best-mode min|max]
//           [--prefix P] [--wait S] [--dry-run] [--leftovers] [--json]
//                                        removes what the retention policy does not keep; safe
//                                        beside a live writer (runtime/run_lock.h)
//   ckpt export SRC DST [--json]         a self-contained copy of a checkpoint (one whose
//                                        files an incremental save shares with others, too)
//
// Exit codes: 0 ok, 1 something corrupt, missing or failed, 2 a usage error. Errors are one line
// on stderr, "ckpt: <what>"; with --json, stdout carries exactly one JSON document.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>

#include "io/error.h"
#include "tools/commands.h"
#include "tools/format.h"

namespace ckpt::tools {
namespace {

int run(int argc, char** argv) {
  CLI::App app{"Lists, inspects and verifies checkpoints written by the ckpt runtime.", "ckpt"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ckpt 0.1.0");
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return fmt::format("ckpt: {}\nRun 'ckpt --help' for usage.\n", one_line(e.what()));
  });

  std::string path;
  bool json = false;
  std::string engine = "auto";

  CLI::App* list = app.add_subcommand("list", "List the committed checkpoints of a run directory");
  list->add_option("RUN_DIR", path, "Run directory (holds the checkpoints and `latest`)")
      ->required();
  list->add_flag("--json", json, "Print one JSON document");

  CLI::App* inspect =
      app.add_subcommand("inspect", "Show the manifest, metadata and leaves of a checkpoint");
  inspect->add_option("PATH", path, "Checkpoint directory (holds manifest.ckpt)")->required();
  inspect->add_flag("--json", json, "Print one JSON document");

  CLI::App* verify = app.add_subcommand(
      "verify", "Check every checksum of a checkpoint, or of every checkpoint in a run directory");
  verify->add_option("PATH", path, "Checkpoint directory or run directory")->required();
  verify->add_flag("--json", json, "Print one JSON document");
  verify->add_option("--engine", engine, "IO engine")
      ->check(CLI::IsMember({"auto", "uring", "threads"}))
      ->capture_default_str();

  CLI::App* latest = app.add_subcommand("latest", "Print the suffix the `latest` pointer names");
  latest->add_option("RUN_DIR", path, "Run directory")->required();

  GcOptions gc_options;
  CLI::App* gc = app.add_subcommand("gc", "Remove the checkpoints a retention policy does not keep");
  gc->add_option("RUN_DIR", path, "Run directory")->required();
  gc->add_option("--keep", gc_options.keep, "Checkpoints to keep (besides latest)")
      ->required()
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 40));
  gc->add_option("--keep-period", gc_options.keep_period,
                 "Also keep steps that are multiples of this (0: none)")
      ->check(CLI::NonNegativeNumber);
  gc->add_option("--prefix", gc_options.prefix,
                 "Only suffixes starting with this (e.g. step/) count and may be removed");
  gc->add_option("--wait", gc_options.wait_seconds,
                 "Seconds to wait for a live writer's lock before giving up")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  gc->add_option("--best-metric", gc_options.best_metric, "Keep the best by this metadata key");
  gc->add_option("--best-mode", gc_options.best_mode, "min or max")
      ->check(CLI::IsMember({"min", "max"}));
  gc->add_flag("--dry-run", gc_options.dry_run, "Only print what would be removed");
  gc->add_flag("--leftovers", gc_options.leftovers,
               "Also remove *.tmp-* leftovers of interrupted writes (refused while a writer is live)");
  gc->add_flag("--json", json, "Print one JSON document");

  std::string export_dst;
  CLI::App* exp = app.add_subcommand(
      "export", "Write a self-contained copy of a checkpoint (nothing shared with another)");
  exp->add_option("SRC", path, "Checkpoint directory")->required();
  exp->add_option("DST", export_dst, "Where the copy goes (committed atomically)")->required();
  exp->add_flag("--json", json, "Print one JSON document");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 reports an unknown command as a missing subcommand; name the word instead.
    if (app.get_subcommands().empty() && argc > 1 && argv[1][0] != '-' && e.get_exit_code() != 0) {
      fmt::print(stderr, "ckpt: unknown command '{}'\nRun 'ckpt --help' for usage.\n", argv[1]);
      return kExitUsage;
    }
    // CLI11's own exit codes are 0 for --help/--version and various others for errors.
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }

  if (list->parsed()) return run_list(path, json);
  if (inspect->parsed()) return run_inspect(path, json);
  if (verify->parsed()) return run_verify(path, json, io::parse_engine_kind(engine));
  if (gc->parsed()) return run_gc(path, gc_options, json);
  if (exp->parsed()) return run_export(path, export_dst, json);
  return run_latest(path);
}

}  // namespace
}  // namespace ckpt::tools

int main(int argc, char** argv) {
  int rc = ckpt::tools::kExitFailed;
  try {
    rc = ckpt::tools::run(argc, argv);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "ckpt: {}\n", ckpt::tools::one_line(e.what()));
    return ckpt::tools::kExitFailed;
  } catch (...) {
    std::fflush(stdout);
    std::fputs("ckpt: unknown error\n", stderr);
    return ckpt::tools::kExitFailed;
  }
  // A report that did not reach stdout (a full disk, a closed pipe) is a failure too.
  if (std::fflush(stdout) != 0 || std::ferror(stdout) != 0) {
    std::fprintf(stderr, "ckpt: cannot write to stdout: %s\n", std::strerror(errno));
    return ckpt::tools::kExitFailed;
  }
  return rc;
}
