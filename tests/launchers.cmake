# examples/train_ddp under the real launchers, started the way users start them (no --rank,
# --world or --store): torchrun's elastic agent (Debian's python3-torch) and a one-machine SLURM
# cluster (slurm-wlm and munge, started by scripts/slurm-cluster.sh). Each script exits 77
# (Skipped) with its reason where its launcher cannot run here.
if(TARGET train_ddp)
  add_test(NAME "launch: torchrun restarts 4 workers after one is SIGKILLed, bit-identical to an uninterrupted run"
           COMMAND bash ${PROJECT_SOURCE_DIR}/scripts/launch-torchrun.sh restart $<TARGET_FILE:train_ddp>
                   ${CMAKE_CURRENT_BINARY_DIR}/torchrun-restart)
  add_test(NAME "launch: torchrun elastic, a node lost, the survivors resume from the memory tier at world 2"
           COMMAND bash ${PROJECT_SOURCE_DIR}/scripts/launch-torchrun.sh elastic $<TARGET_FILE:train_ddp>
                   ${CMAKE_CURRENT_BINARY_DIR}/torchrun-elastic)
  set_tests_properties("launch: torchrun restarts 4 workers after one is SIGKILLed, bit-identical to an uninterrupted run"
                       "launch: torchrun elastic, a node lost, the survivors resume from the memory tier at world 2"
                       PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77 PASS_REGULAR_EXPRESSION "\nOK: "
                       # Four workers and their agents: the machine's two cores to themselves.
                       PROCESSORS 2)
endif()
if(TARGET train_ddp)
  set(slurm_requeue "launch: SLURM, scontrol requeue mid-training, the requeued job resumes bit-identical")
  set(slurm_signal "launch: SLURM, --signal=B:USR1 before the time limit, every rank saves, requeued, bit-identical")
  add_test(NAME "${slurm_requeue}"
           COMMAND bash ${PROJECT_SOURCE_DIR}/scripts/launch-slurm.sh requeue $<TARGET_FILE:train_ddp>
                   ${CMAKE_CURRENT_BINARY_DIR}/slurm-requeue)
  add_test(NAME "${slurm_signal}"
           COMMAND bash ${PROJECT_SOURCE_DIR}/scripts/launch-slurm.sh signal $<TARGET_FILE:train_ddp>
                   ${CMAKE_CURRENT_BINARY_DIR}/slurm-signal)
  set_tests_properties("${slurm_requeue}" "${slurm_signal}" PROPERTIES TIMEOUT 420 SKIP_RETURN_CODE 77
                       PASS_REGULAR_EXPRESSION "\nOK: ")
  # The time-limit test waits for SLURM's 30-second check: it starts early, beside the rest.
  set_tests_properties("${slurm_signal}" PROPERTIES COST 500)
endif()
