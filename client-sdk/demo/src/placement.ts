import type { Block, FlowPoint } from '@resonant/client'

/** A block card's size on the canvas (styles.css `.block-node`), roughly. */
const W = 200
const H = 70

/**
 * Where a new block goes: centred on `center` (the middle of the visible canvas), moved down
 * and right in steps until it covers no block already there, so blocks added one after
 * another fan out instead of stacking.
 */
export function placeNewBlock(center: FlowPoint, blocks: readonly Block[]): FlowPoint {
  const start = { x: Math.round(center.x - W / 2), y: Math.round(center.y - H / 2) }
  const near = blocks.filter((b) => Math.abs(b.position.x - start.x) < W * 3 && Math.abs(b.position.y - start.y) < H * 6)
  const overlaps = (p: FlowPoint) => near.some((b) => Math.abs(b.position.x - p.x) < W * 0.6 && Math.abs(b.position.y - p.y) < H * 0.8)
  for (let i = 0; i < 24; i++) {
    const p = { x: start.x + i * 40, y: start.y + i * 60 }
    if (!overlaps(p)) return p
  }
  return start
}
