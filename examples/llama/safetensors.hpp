#pragma once
// Reading and writing the safetensors format (https://huggingface.co/docs/safetensors), the
// file Hugging Face checkpoints ship their weights in:
//
//   [8 bytes]  N, the header length, an unsigned little-endian 64-bit integer
//   [N bytes]  a JSON object: {"<tensor name>": {"dtype": "BF16", "shape": [256, 688],
//              "data_offsets": [begin, end]}, ..., "__metadata__": {"key": "value"}}
//   [rest]     the data buffer; each tensor's bytes are data[begin, end), row-major, little-endian
//
// The reader maps the file into memory and converts a tensor only when it is asked for, so
// opening a checkpoint of many gigabytes costs nothing until its weights are read. A file is
// untrusted input: every size and offset in the header is checked against the file before any
// byte is touched, and every problem is a `load_error` naming the file and the tensor.

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include "input.hpp"

namespace llama {

// A model file could not be read or does not describe a valid model. Thrown by the safetensors
// reader and by the loaders (load.hpp); the message starts with the file's path.
class load_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The format is little-endian; on a big-endian host every element would need a byte swap.
static_assert(std::endian::native == std::endian::little,
              "the safetensors reader assumes a little-endian host");

namespace detail {

// Builds a message from streamable parts. Paths are passed as strings: streaming a
// std::filesystem::path would quote it.
template <class... Parts>
std::string message(const Parts&... parts)
{
    std::ostringstream out;
    (out << ... << parts);
    return out.str();
}

// The product of sizes read from a file, or nothing if it does not fit in 64 bits: a hostile
// header can hold any numbers, and a wrapped product would pass a size check.
inline std::optional<std::uint64_t> checked_product(std::initializer_list<std::uint64_t> factors)
{
    std::uint64_t product = 1;
    for (const std::uint64_t factor : factors) {
        if (factor != 0 && product > std::numeric_limits<std::uint64_t>::max() / factor)
            return std::nullopt;
        product *= factor;
    }
    return product;
}

inline std::string shape_string(const std::vector<std::int64_t>& shape)
{
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i)
        s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// A read-only memory mapping of a whole file, unmapped when destroyed. The pages are read
// from disk on first touch, so only the tensors actually converted are ever read.
class MappedFile {
public:
    explicit MappedFile(const std::filesystem::path& path)
    {
        const auto fail = [&](std::string_view what) {
            throw load_error(
                message(path.string(), ": ", what, ": ", std::system_category().message(errno)));
        };
        require_regular_file<load_error>(path);
        // Non-blocking in case the path became a FIFO since the check: its open would wait
        // for a writer. The fstat below then rejects it; a regular file ignores the flag.
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0)
            fail("cannot open");
        // The mapping keeps the file alive by itself, so the descriptor can go at once.
        struct Closer {
            int fd;
            ~Closer() { ::close(fd); }
        } closer{fd};

        struct stat status {};
        if (::fstat(fd, &status) != 0)
            fail("cannot stat");
        if (!S_ISREG(status.st_mode))
            throw load_error(message(path.string(), ": not a regular file"));
        size_ = static_cast<std::size_t>(status.st_size);
        if (size_ == 0)
            return; // mmap rejects an empty length; an empty file is simply no bytes
        void* address = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
        if (address == MAP_FAILED)
            fail("cannot map into memory");
        address_ = address;
    }

    ~MappedFile()
    {
        if (address_)
            ::munmap(address_, size_);
    }

    MappedFile(MappedFile&& other) noexcept
        : address_(std::exchange(other.address_, nullptr)), size_(std::exchange(other.size_, 0))
    {
    }

    MappedFile& operator=(MappedFile&& other) noexcept
    {
        if (this != &other) {
            if (address_)
                ::munmap(address_, size_);
            address_ = std::exchange(other.address_, nullptr);
            size_ = std::exchange(other.size_, 0);
        }
        return *this;
    }

    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    std::span<const std::byte> bytes() const
    {
        return {static_cast<const std::byte*>(address_), size_};
    }

private:
    void* address_ = nullptr;
    std::size_t size_ = 0;
};

// Converts little-endian elements of type `Stored` to float. memcpy rather than a cast of the
// pointer: offsets in the file need not be aligned to the element size.
template <class Stored>
void convert_to_float(std::span<const std::byte> bytes, std::span<float> out)
{
    static_assert(std::is_trivially_copyable_v<Stored>);
    for (std::size_t i = 0; i < out.size(); ++i) {
        Stored value;
        std::memcpy(&value, bytes.data() + i * sizeof(Stored), sizeof(Stored));
        out[i] = static_cast<float>(value);
    }
}

} // namespace detail

// Bytes per element of a safetensors dtype, or 0 for a dtype this reader does not know (newer
// sub-byte formats, for instance). Unknown dtypes are accepted when a file is opened, so that a
// checkpoint with one exotic tensor still yields the others, and rejected when converted.
inline std::size_t dtype_size(std::string_view dtype)
{
    static const std::map<std::string_view, std::size_t> sizes{
        {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
        {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
        {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8},
    };
    const auto it = sizes.find(dtype);
    return it == sizes.end() ? 0 : it->second;
}

struct TensorInfo {
    std::string dtype;               // "F32", "BF16", "F16", "I32", ...
    std::vector<std::int64_t> shape; // row-major; [] is a scalar
    std::size_t begin = 0;           // byte range [begin, end) within the data buffer
    std::size_t end = 0;

    std::uint64_t elements() const
    {
        std::uint64_t n = 1;
        for (const std::int64_t extent : shape)
            n *= static_cast<std::uint64_t>(extent); // exact: the reader checked it fits
        return n;
    }
};

// One safetensors file, opened and validated, its tensors converted on request. Movable (the
// mapping moves with it), not copyable.
class SafeTensors {
public:
    explicit SafeTensors(const std::filesystem::path& path) : path_(path), file_(path)
    {
        const std::span<const std::byte> bytes = file_.bytes();
        if (bytes.size() < 8)
            fail("the file is ", bytes.size(),
                 " bytes, shorter than the 8-byte header length that starts a safetensors file");
        std::uint64_t header_length = 0;
        std::memcpy(&header_length, bytes.data(), 8);
        if (header_length > bytes.size() - 8)
            fail("the header length is ", header_length, " bytes but only ", bytes.size() - 8,
                 " bytes follow it (truncated file, or not a safetensors file)");
        // The reference implementation's limit: anything larger is corruption, not a header,
        // and parsing it would cost memory in proportion.
        constexpr std::uint64_t max_header_length = 100'000'000;
        if (header_length > max_header_length)
            fail("the header length is ", header_length, " bytes, more than the limit of ",
                 max_header_length);

        const auto header_bytes = bytes.subspan(8, static_cast<std::size_t>(header_length));
        data_ = bytes.subspan(8 + header_bytes.size());
        parse_header(std::string_view(reinterpret_cast<const char*>(header_bytes.data()),
                                      header_bytes.size()));
    }

    const std::filesystem::path& path() const { return path_; }

    bool contains(const std::string& name) const { return tensors_.contains(name); }

    const TensorInfo& info(const std::string& name) const
    {
        const auto it = tensors_.find(name);
        if (it == tensors_.end())
            fail("no tensor named ", name);
        return it->second;
    }

    // Tensor names, sorted.
    std::vector<std::string> names() const
    {
        std::vector<std::string> result;
        result.reserve(tensors_.size());
        for (const auto& [name, tensor] : tensors_)
            result.push_back(name);
        return result;
    }

    // The free-form string pairs of "__metadata__" (e.g. {"format": "pt"}).
    const std::map<std::string, std::string>& metadata() const { return metadata_; }

    // A tensor's raw little-endian bytes, inside the mapping: valid while this object lives.
    std::span<const std::byte> bytes(const std::string& name) const
    {
        const TensorInfo& t = info(name);
        return data_.subspan(t.begin, t.end - t.begin);
    }

    // Converts an F32, BF16 or F16 tensor of exactly `expected_shape` to float into `out`
    // (which must hold that many elements): the copy-free path for filling a caller's matrix.
    void read_floats(const std::string& name, const std::vector<std::int64_t>& expected_shape,
                     std::span<float> out) const
    {
        const TensorInfo& t = float_tensor(name, expected_shape);
        if (out.size() != t.elements())
            throw std::invalid_argument(
                detail::message("SafeTensors::read_floats: the output holds ", out.size(),
                                " floats, tensor ", name, " has ", t.elements()));
        const std::span<const std::byte> raw = bytes(name);
        if (t.dtype == "F32")
            detail::convert_to_float<float>(raw, out);
        else if (t.dtype == "BF16")
            detail::convert_to_float<Eigen::bfloat16>(raw, out);
        else
            detail::convert_to_float<Eigen::half>(raw, out);
    }

    std::vector<float> floats(const std::string& name,
                              const std::vector<std::int64_t>& expected_shape) const
    {
        std::vector<float> out(float_tensor(name, expected_shape).elements());
        read_floats(name, expected_shape, out);
        return out;
    }

    // An I32 tensor's values, whatever its shape (token ids, for instance).
    std::vector<std::int32_t> int32s(const std::string& name) const
    {
        const TensorInfo& t = info(name);
        if (t.dtype != "I32")
            fail("tensor ", name, " has dtype ", t.dtype, ", expected I32");
        const std::span<const std::byte> raw = bytes(name);
        std::vector<std::int32_t> out(raw.size() / sizeof(std::int32_t));
        if (!raw.empty())
            std::memcpy(out.data(), raw.data(), raw.size());
        return out;
    }

private:
    template <class... Parts>
    [[noreturn]] void fail(const Parts&... parts) const
    {
        throw load_error(detail::message(path_.string(), ": ", parts...));
    }

    // The tensor, once known to have the shape the caller expects and a float dtype.
    const TensorInfo& float_tensor(const std::string& name,
                                   const std::vector<std::int64_t>& expected_shape) const
    {
        const TensorInfo& t = info(name);
        if (t.shape != expected_shape)
            fail("tensor ", name, " has shape ", detail::shape_string(t.shape), ", expected ",
                 detail::shape_string(expected_shape));
        if (t.dtype != "F32" && t.dtype != "BF16" && t.dtype != "F16")
            fail("tensor ", name, " has dtype ", t.dtype,
                 "; only F32, BF16 and F16 can be read as floats");
        return t;
    }

    void parse_header(std::string_view text)
    {
        nlohmann::json header;
        try {
            header = parse_json(text);
        } catch (const json_error& e) {
            fail("the header is rejected: ", e.what());
        }
        if (!header.is_object())
            fail("the header is JSON but not an object (it is ", header.type_name(), ")");

        for (const auto& [name, entry] : header.items()) {
            if (name == "__metadata__")
                parse_metadata(entry);
            else
                tensors_.emplace(name, parse_entry(name, entry));
        }
        check_tiling();
    }

    // The tensors' byte ranges, sorted by begin, must tile the data buffer: the first begins
    // at 0, each where the previous ends, the last at the end of the file. Ranges that
    // overlap let one tensor be read as another's bytes; gaps and trailing bytes mean
    // offsets shifted against the data, which would read every tensor as garbage. The
    // reference implementation refuses all of these for the same reason.
    void check_tiling() const
    {
        std::vector<std::pair<const std::string*, const TensorInfo*>> by_begin;
        by_begin.reserve(tensors_.size());
        for (const auto& [name, t] : tensors_)
            by_begin.emplace_back(&name, &t);
        // Ties broken by end so that an empty tensor sorts before the one it shares a begin
        // with: it then sits at a boundary and tiles.
        std::sort(by_begin.begin(), by_begin.end(), [](const auto& a, const auto& b) {
            return std::pair(a.second->begin, a.second->end) <
                   std::pair(b.second->begin, b.second->end);
        });
        std::size_t covered = 0;
        const std::string* previous = nullptr;
        for (const auto& [name, t] : by_begin) {
            if (t->begin < covered)
                fail("tensor ", *name, ": data_offsets [", t->begin, ", ", t->end,
                     "] overlap those of tensor ", *previous, ", which end at ", covered);
            if (t->begin > covered)
                fail("tensor ", *name, ": data_offsets [", t->begin, ", ", t->end,
                     "] leave bytes [", covered, ", ", t->begin, ") of the data buffer unused",
                     previous ? " after tensor " + *previous : std::string(" at its start"));
            covered = t->end;
            previous = name;
        }
        if (covered != data_.size())
            fail("the data buffer is ", data_.size(), " bytes but the tensors end at ", covered,
                 previous ? " (tensor " + *previous + ")" : std::string(" (no tensors)"),
                 ": bytes after the last tensor");
    }

    void parse_metadata(const nlohmann::json& entry)
    {
        if (!entry.is_object())
            fail("__metadata__ is not an object");
        for (const auto& [key, value] : entry.items())
            metadata_[key] = value.is_string() ? value.get<std::string>() : value.dump();
    }

    // A non-negative JSON integer as u64, or nothing (floats, strings, negative numbers...).
    static std::optional<std::uint64_t> non_negative_integer(const nlohmann::json& value)
    {
        if (value.is_number_unsigned())
            return value.get<std::uint64_t>();
        if (value.is_number_integer() && value.get<std::int64_t>() >= 0)
            return static_cast<std::uint64_t>(value.get<std::int64_t>());
        return std::nullopt;
    }

    TensorInfo parse_entry(const std::string& name, const nlohmann::json& entry) const
    {
        if (!entry.is_object())
            fail("tensor ", name, ": the entry is not an object");
        for (const char* key : {"dtype", "shape", "data_offsets"})
            if (!entry.contains(key))
                fail("tensor ", name, " has no \"", key, "\"");

        TensorInfo t;
        if (!entry.at("dtype").is_string())
            fail("tensor ", name, ": dtype is not a string");
        t.dtype = entry.at("dtype").get<std::string>();

        const nlohmann::json& shape = entry.at("shape");
        if (!shape.is_array())
            fail("tensor ", name, ": shape is not an array");
        std::uint64_t elements = 1;
        for (const nlohmann::json& extent : shape) {
            const auto n = non_negative_integer(extent);
            if (!n || *n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
                fail("tensor ", name, ": shape ", shape.dump(),
                     " is not a list of non-negative integers");
            const auto product = detail::checked_product({elements, *n});
            if (!product)
                fail("tensor ", name, ": shape ", shape.dump(), " has more than 2^64 elements");
            elements = *product;
            t.shape.push_back(static_cast<std::int64_t>(*n));
        }

        const nlohmann::json& offsets = entry.at("data_offsets");
        const auto begin = offsets.is_array() && offsets.size() == 2
                               ? non_negative_integer(offsets[0])
                               : std::nullopt;
        const auto end = begin ? non_negative_integer(offsets[1]) : std::nullopt;
        if (!begin || !end)
            fail("tensor ", name, ": data_offsets ", offsets.dump(),
                 " is not a pair of non-negative integers");
        if (*begin > *end || *end > data_.size())
            fail("tensor ", name, ": data_offsets [", *begin, ", ", *end,
                 "] is not a byte range within the ", data_.size(), "-byte data buffer");
        t.begin = static_cast<std::size_t>(*begin);
        t.end = static_cast<std::size_t>(*end);

        if (const std::size_t element_size = dtype_size(t.dtype)) {
            const auto expected = detail::checked_product({elements, element_size});
            if (!expected || *expected != *end - *begin)
                fail("tensor ", name, " of dtype ", t.dtype, " and shape ",
                     detail::shape_string(t.shape), " needs ", elements, " x ", element_size,
                     " bytes, but data_offsets [", *begin, ", ", *end, "] hold ", *end - *begin);
        }
        return t;
    }

    std::filesystem::path path_;
    detail::MappedFile file_;
    std::span<const std::byte> data_; // inside the mapping, which does not move with `file_`
    std::map<std::string, TensorInfo> tensors_;
    std::map<std::string, std::string> metadata_;
};

// ---------------------------------------------------------------------------------------------
// Writing: used to make test models and to save results a reference implementation can read.

struct NamedTensor {
    std::string name;
    std::string dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> data; // little-endian, row-major
};

namespace detail {

template <class Stored, class Value>
NamedTensor encode(std::string name, std::string dtype, std::vector<std::int64_t> shape,
                   std::span<const Value> values)
{
    NamedTensor t{std::move(name), std::move(dtype), std::move(shape), {}};
    t.data.resize(values.size() * sizeof(Stored));
    for (std::size_t i = 0; i < values.size(); ++i) {
        const Stored stored = static_cast<Stored>(values[i]); // rounds to nearest even
        std::memcpy(t.data.data() + i * sizeof(Stored), &stored, sizeof(Stored));
    }
    return t;
}

} // namespace detail

inline NamedTensor f32_tensor(std::string name, std::vector<std::int64_t> shape,
                              std::span<const float> values)
{
    return detail::encode<float>(std::move(name), "F32", std::move(shape), values);
}

inline NamedTensor bf16_tensor(std::string name, std::vector<std::int64_t> shape,
                               std::span<const float> values)
{
    return detail::encode<Eigen::bfloat16>(std::move(name), "BF16", std::move(shape), values);
}

inline NamedTensor f16_tensor(std::string name, std::vector<std::int64_t> shape,
                              std::span<const float> values)
{
    return detail::encode<Eigen::half>(std::move(name), "F16", std::move(shape), values);
}

inline NamedTensor i32_tensor(std::string name, std::vector<std::int64_t> shape,
                              std::span<const std::int32_t> values)
{
    return detail::encode<std::int32_t>(std::move(name), "I32", std::move(shape), values);
}

// Writes the tensors in the given order. Throws std::invalid_argument for a tensor whose bytes
// do not match its shape and dtype or a repeated name, std::runtime_error if writing fails.
inline void write_safetensors(const std::filesystem::path& path,
                              const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {})
{
    nlohmann::json header = nlohmann::json::object();
    if (!metadata.empty())
        header["__metadata__"] = metadata;
    std::size_t offset = 0;
    for (const NamedTensor& t : tensors) {
        const auto fail = [&](const auto&... parts) {
            throw std::invalid_argument(
                detail::message("write_safetensors: tensor ", t.name, ": ", parts...));
        };
        if (t.name == "__metadata__" || header.contains(t.name))
            fail("the name is reserved or used twice");
        std::int64_t elements = 1;
        for (const std::int64_t extent : t.shape) {
            if (extent < 0)
                fail("negative extent in shape ", detail::shape_string(t.shape));
            elements *= extent;
        }
        const std::size_t element_size = dtype_size(t.dtype);
        if (element_size != 0 && t.data.size() != static_cast<std::size_t>(elements) * element_size)
            fail(t.data.size(), " bytes for shape ", detail::shape_string(t.shape), " of dtype ",
                 t.dtype);
        header[t.name] = {{"dtype", t.dtype},
                          {"shape", t.shape},
                          {"data_offsets", {offset, offset + t.data.size()}}};
        offset += t.data.size();
    }

    // Padding the header with spaces so the data buffer starts 8-byte aligned, as the
    // reference writer does: readers can then view F32/F64 data in place.
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    const std::uint64_t header_length = text.size();

    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(&header_length), sizeof header_length);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const NamedTensor& t : tensors)
        out.write(reinterpret_cast<const char*>(t.data.data()),
                  static_cast<std::streamsize>(t.data.size()));
    out.close();
    if (!out)
        throw std::runtime_error(detail::message(path.string(), ": writing failed"));
}

} // namespace llama
