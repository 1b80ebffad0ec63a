//! A driver and its workers in one module, for the subtask tests: `fanout` spawns `square`
//! subtasks of its own module and sums what they return, keeping at most 16 in flight;
//! `bomb` spawns itself until a bound stops it; `crash` traps; `rules` checks that a task
//! cannot use a handle or read a CID that is not its own.

use shoal::{
    Ctx, Error, Handle, Spawn,
    abi::{ErrorCode, MAX_SPAWN_SPEC_LEN, MAX_SUBTASKS, MAX_SUBTASKS_IN_FLIGHT, MAX_TASK_INPUTS},
};

/// Spawns `--arg n=N` (default 8) `square` subtasks, one per `i` in `0..N` given as an
/// object, and writes output `sum` (the sum of the squares). With `--arg crash=1` one of
/// them is `crash` instead.
#[shoal::task]
fn fanout(ctx: &mut Ctx) -> Result<(), Error> {
    let n: u64 = ctx.arg_or("n", 8)?;
    let crash = ctx.arg("crash") == Some("1");
    let module = ctx.module()?;
    let (mut running, mut sum): (Vec<Handle>, u64) = (Vec::new(), 0);
    for i in 0..n {
        if running.len() == MAX_SUBTASKS_IN_FLIGHT {
            let done = ctx.wait(&running)?;
            sum += square_of(ctx, running.swap_remove(done))?;
        }
        let x = ctx.put(i.to_string().as_bytes())?;
        let task = if crash && i == n / 2 {
            "crash"
        } else {
            "square"
        };
        running.push(ctx.spawn(Spawn::new(module).task(task).input("x", x))?);
    }
    for handle in running {
        sum += square_of(ctx, handle)?;
    }
    ctx.output("sum", sum.to_string().as_bytes())?;
    Ok(())
}

fn square_of(ctx: &Ctx, handle: Handle) -> Result<u64, Error> {
    let y = ctx.read(handle.get()?.output("y")?)?;
    String::from_utf8_lossy(&y)
        .parse()
        .map_err(|e| Error::msg(format!("a square was not a number: {e}")))
}

/// Reads input `x` (a number as text) and writes output `y`, its square.
#[shoal::task]
fn square(ctx: &mut Ctx) -> Result<(), Error> {
    let x: u64 = String::from_utf8_lossy(&ctx.input("x")?)
        .parse()
        .map_err(|e| Error::msg(format!("x is not a number: {e}")))?;
    ctx.output("y", (x * x).to_string().as_bytes())?;
    Ok(())
}

/// Spawns itself and waits for it: a fork bomb, stopped by the nesting depth.
#[shoal::task]
fn bomb(ctx: &mut Ctx) -> Result<(), Error> {
    let module = ctx.module()?;
    let child = ctx.spawn(Spawn::new(module).task("bomb"))?;
    child.get()?;
    Ok(())
}

/// Traps.
#[shoal::task]
fn crash(_ctx: &mut Ctx) -> Result<(), Error> {
    std::process::abort()
}

/// Checks the rules a task lives by, and writes output `ok` if every one held: a handle it
/// never got is refused, a CID nobody gave it is denied, to read and to give, and a spawn or
/// a wait past the ABI's bounds is refused.
#[shoal::task]
fn rules(ctx: &mut Ctx) -> Result<(), Error> {
    let expect = |what: &str, got: Option<ErrorCode>, want: ErrorCode| {
        if got == Some(want) {
            Ok(())
        } else {
            Err(Error::msg(format!("{what}: got {got:?}, want {want:?}")))
        }
    };
    let forged = ctx.wait(&[Handle::forge(7)]).err().and_then(|e| e.code());
    expect("a forged handle", forged, ErrorCode::BadHandle)?;
    let stranger = shoal::Cid([0x5a; 32]);
    let read = ctx.read(stranger).err().and_then(|e| e.code());
    expect("reading a stranger's CID", read, ErrorCode::Denied)?;
    let module = ctx.module()?;
    let given = ctx
        .spawn(Spawn::new(module).task("square").input("x", stranger))
        .err()
        .and_then(|e| e.code());
    expect("giving a stranger's CID", given, ErrorCode::Denied)?;
    let x = ctx.put(b"1")?;
    let too_many = (0..=MAX_TASK_INPUTS).fold(Spawn::new(module).task("square"), |s, i| {
        s.input(&format!("x{i}"), x)
    });
    let refused = ctx.spawn(too_many).err().and_then(|e| e.code());
    expect(
        "a spawn over the input limit",
        refused,
        ErrorCode::InvalidArgument,
    )?;
    let huge = Spawn::new(module)
        .task("square")
        .arg("pad", "x".repeat(MAX_SPAWN_SPEC_LEN));
    let refused = ctx.spawn(huge).err().and_then(|e| e.code());
    expect(
        "a spawn spec over its length limit",
        refused,
        ErrorCode::InvalidArgument,
    )?;
    let repeated = ctx
        .wait(&vec![Handle::forge(1); MAX_SUBTASKS + 1])
        .err()
        .and_then(|e| e.code());
    expect(
        "a wait on more handles than a task has",
        repeated,
        ErrorCode::InvalidArgument,
    )?;
    ctx.output("ok", b"ok")?;
    Ok(())
}
