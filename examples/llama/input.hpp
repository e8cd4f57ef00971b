#pragma once
// Reading the example's untrusted input files: model files, config.json, needle sets,
// published figures. Two hazards come before any field is looked at:
//
//   - a path that is not a regular file: opening a FIFO for reading blocks until someone
//     writes to it, so the loader would hang instead of failing;
//   - JSON that nlohmann accepts but that is not safe or not meaningful to use: nesting so
//     deep that any recursive walk of the value (dump(), comparison, our own readers)
//     overflows the stack, and a key repeated in one object, of which nlohmann silently
//     keeps one (a safetensors header naming a tensor twice describes two byte ranges).
//
// Both are checked here, the JSON ones while parsing, before the value is built.

#include <cerrno>
#include <filesystem>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace llama {

// JSON the example refuses to read. The message says why, without the file's name: the
// caller knows what it was reading and adds it.
class json_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Far deeper than any file the example reads (config.json and safetensors headers nest 3
// levels, needle sets 1), and far shallower than the few thousand frames a recursive walk
// of a JSON value needs to exhaust a thread's stack.
inline constexpr int max_json_depth = 64;

// Parses `input` (anything nlohmann::json::parse takes) and rejects JSON nested more than
// max_json_depth levels or an object with a repeated key, while parsing: the rejected value
// is never built, so nothing recursive ever runs over it.
template <class Input>
nlohmann::json parse_json(Input&& input)
{
    using Event = nlohmann::json::parse_event_t;
    // The keys of each object being parsed, innermost last; an array's entry stays empty.
    std::vector<std::set<std::string>> open_keys;
    const auto check = [&](int depth, Event event, nlohmann::json& parsed) {
        switch (event) {
        case Event::object_start:
        case Event::array_start:
            if (depth >= max_json_depth)
                throw json_error("JSON nested more than " + std::to_string(max_json_depth) +
                                 " levels deep");
            open_keys.emplace_back();
            break;
        case Event::object_end:
        case Event::array_end: open_keys.pop_back(); break;
        case Event::key:
            if (!open_keys.back().insert(parsed.get<std::string>()).second)
                throw json_error("key " + parsed.dump() + " appears twice in one object");
            break;
        case Event::value: break;
        }
        return true;
    };
    try {
        return nlohmann::json::parse(std::forward<Input>(input), check);
    } catch (const nlohmann::json::parse_error& e) {
        throw json_error(std::string("not valid JSON (") + e.what() + ")");
    }
}

// Throws `Error` with "<path>: ..." unless `path` is a regular file (symbolic links
// followed). Called before opening: a FIFO's open would block.
template <class Error>
void require_regular_file(const std::filesystem::path& path)
{
    std::error_code error;
    const std::filesystem::file_status status = std::filesystem::status(path, error);
    if (std::filesystem::is_regular_file(status))
        return;
    if (!std::filesystem::exists(status))
        throw Error(path.string() +
                    ": cannot open: " + (error ? error.message() : std::string("no such file")));
    throw Error(path.string() + ": not a regular file");
}

} // namespace llama
