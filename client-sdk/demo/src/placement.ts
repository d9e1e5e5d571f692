import type { Block, FlowPoint } from '@resonant/client'

/** A block card's size on the canvas (styles.css `.block-node`), roughly. */
const W = 200
const H = 70

/**
 * Where a new block goes: centred on `center` (the middle of the visible canvas), moved down
 * in steps until it covers no block already there, so blocks added one after
 * another fan out instead of stacking.
 */
export function placeNewBlock(center: FlowPoint, blocks: readonly Block[]): FlowPoint {
  const start = { x: Math.round(center.x - W / 2), y: Math.round(center.y - H / 2) }
  const gap = 16
  const overlaps = (p: FlowPoint) =>
    blocks.some((b) => Math.abs(b.position.x - p.x) < W + gap && Math.abs(b.position.y - p.y) < H + gap)
  for (let i = 0; i < 32; i++) {
    const p = { x: start.x + (i % 2) * 24, y: start.y + i * (H + gap) }
    if (!overlaps(p)) return p
  }
  return start
}
