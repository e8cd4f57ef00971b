#pragma once
/// \file
/// Partition policies: which host owns which blocks, and which host is the query host.

#include <algorithm>
#include <concepts>
#include <numeric>
#include <optional>
#include <span>
#include <vector>

#include "block.hpp"

namespace star {

/// A Partition policy assigns every block to a host: `assign(blocks, hosts)` returns the
/// owner rank of each block, in `[0, hosts)`; hosts may own no block (fewer blocks than
/// hosts). `query_host(hosts)` names the host that receives the merged phase-2 result and
/// alone stores the query's and generated tokens' K/V.
// clang-format off
template <class P>
concept Partition = std::copy_constructible<P> &&
                    requires(const P& p, std::span<const TokenRange> blocks, int hosts) {
                        { p.assign(blocks, hosts) } -> std::same_as<std::vector<int>>;
                        { p.query_host(hosts) } -> std::same_as<int>;
                    };
// clang-format on

namespace detail {
inline void check_hosts(int hosts)
{
    if (hosts <= 0)
        fail("partition: the number of hosts must be at least 1, got ", hosts);
}
} // namespace detail

/// The query host of the partitions below: `rank`, or the last host when empty (the
/// paper's reference).
struct QueryHost {
    std::optional<int> rank; ///< The query host's rank; the last host when empty.

    /// The query host of a group of `hosts` hosts.
    /// \throws star::error if `rank` is set and not in `[0, hosts)`.
    [[nodiscard]] int query_host(int hosts) const
    {
        const int chosen = rank.value_or(hosts - 1);
        if (chosen < 0 || chosen >= hosts)
            detail::fail("query host ", chosen, " is out of range: the group has ", hosts,
                         " hosts (ranks 0..", hosts - 1, ")");
        return chosen;
    }
};

/// Contiguous runs of blocks; with `n` blocks on `H` hosts the first `n mod H` hosts get
/// one block more (the paper's reference).
struct Contiguous : QueryHost {
    /// The owner of each block.
    /// \throws star::error if `hosts` is less than 1.
    [[nodiscard]] std::vector<int> assign(std::span<const TokenRange> blocks, int hosts) const
    {
        detail::check_hosts(hosts);
        const auto n = static_cast<index>(blocks.size());
        std::vector<int> owner;
        for (int h = 0; h < hosts; ++h) {
            const index count = n / hosts + (h < n % hosts ? 1 : 0);
            owner.insert(owner.end(), static_cast<std::size_t>(count), h);
        }
        return owner;
    }
};

/// Block `i` to host `i mod H`.
struct RoundRobin : QueryHost {
    /// The owner of each block.
    /// \throws star::error if `hosts` is less than 1.
    [[nodiscard]] std::vector<int> assign(std::span<const TokenRange> blocks, int hosts) const
    {
        detail::check_hosts(hosts);
        std::vector<int> owner(blocks.size());
        for (std::size_t i = 0; i < owner.size(); ++i)
            owner[i] = static_cast<int>(i % static_cast<std::size_t>(hosts));
        return owner;
    }
};

/// Balanced by tokens: largest blocks first, each to the host holding the fewest tokens so
/// far (ties to the lower rank). Evens out uneven block sizes.
struct BalancedTokens : QueryHost {
    /// The owner of each block.
    /// \throws star::error if `hosts` is less than 1.
    [[nodiscard]] std::vector<int> assign(std::span<const TokenRange> blocks, int hosts) const
    {
        detail::check_hosts(hosts);
        std::vector<std::size_t> order(blocks.size());
        std::iota(order.begin(), order.end(), std::size_t{0});
        std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
            return blocks[a].size() > blocks[b].size();
        });
        std::vector<index> load(static_cast<std::size_t>(hosts), 0);
        std::vector<int> owner(blocks.size());
        for (const std::size_t b : order) {
            const auto lightest = std::min_element(load.begin(), load.end()) - load.begin();
            owner[b] = static_cast<int>(lightest);
            load[static_cast<std::size_t>(lightest)] += blocks[b].size();
        }
        return owner;
    }
};

static_assert(Partition<Contiguous>);
static_assert(Partition<RoundRobin>);
static_assert(Partition<BalancedTokens>);

} // namespace star
