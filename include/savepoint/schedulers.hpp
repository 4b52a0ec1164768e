// savepoint/schedulers.hpp — what is saved of an LR scheduler, and how to say more.
//
// Built in: torch::optim::StepLR (its step count: the rest are constructor arguments) and,
// with LibTorch 2.x, torch::optim::ReduceLROnPlateauScheduler (best, num_bad_epochs,
// cooldown_counter, last_epoch; it is not an LRScheduler). The learning rates themselves
// belong to the optimizer and are saved with it.
//
// Your own subclass of torch::optim::LRScheduler is refused at save time (UsageError), since
// the base hook would store only the step count and silently drop your members. Either give
// it save(path) / load(path, end_of_epoch) members (hooks.hpp), or, when the step count
// really is its whole state, declare so once:
//   savepoint::register_step_count_scheduler<WarmupCosine>();
#pragma once

#include <savepoint/hooks.hpp>

namespace savepoint {

namespace detail {
/// The step-count hooks of torch::optim::LRScheduler, without the subclass check (torch layer).
TypeHooks step_count_scheduler_hooks();
}  // namespace detail

/// Declares that `Scheduler` (a subclass of torch::optim::LRScheduler) keeps no state besides
/// the base class's step count: it is then saved as "torch.optim.LRScheduler" files.
template <class Scheduler>
void register_step_count_scheduler() {
  hook_table().add<Scheduler>(detail::step_count_scheduler_hooks());
}

}  // namespace savepoint
