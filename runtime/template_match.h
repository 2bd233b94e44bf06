#pragma once
// Matching a restore template against a checkpoint's tree (docs/design.md, section 6).
//
// The template and the manifest's tree are walked together from the root, so that the kind of
// every node is compared, not only the flattened leaf paths: a dict {"0": x} and a list [x] both
// flatten to "0", and an empty dict or list flattens to nothing at all. A node whose kinds differ
// is one difference; what lies below it is not compared further (nor listed again).
// `partial` lets the template leave out dict keys and list items; whatever it does name must be
// there, with the same kind, dtype and shape.
#include <cstddef>
#include <string>
#include <vector>

#include "runtime/array.h"
#include "runtime/manifest.h"
#include "runtime/tree.h"

namespace ckpt {

struct TemplateMatch {
  std::vector<std::string> problems;
  std::vector<const Array*> targets;  // per checkpoint leaf: where its bytes go, or nullptr
  std::vector<bool> wanted;           // per checkpoint leaf: to be read
};

// Compares `templ` with the manifest's tree and collects every difference, each as one line
// naming the path, what the template has and what the checkpoint has. When there is none,
// `targets` and `wanted` say which checkpoint leaves to read into which template arrays (which
// must outlive their use).
TemplateMatch match_template(const Manifest& manifest, const Tree& templ, bool partial);

// The template's own check, which needs no checkpoint: two writable leaves over overlapping
// memory would each receive their own bytes and the last write would win, so each such pair is
// one problem line (in flattening order). `leaves_hint`: about how many leaves `templ` has.
std::vector<std::string> aliasing_problems(const Tree& templ, std::size_t leaves_hint = 0);
// match_template with aliasing_problems(templ) computed already (a restore runs it beside the
// manifest's decode): the same result.
TemplateMatch match_template(const Manifest& manifest, const Tree& templ, bool partial,
                             std::vector<std::string> aliasing);

}  // namespace ckpt
