import React, { useState } from 'react';
import { Button } from './button';

type Props = { label: string };

export function Greeting({ label }: Props) {
  const [count, setCount] = useState(0);
  return <Button onClick={() => setCount(count + 1)}>{label} {count}</Button>;
}

export const Small = () => <span>small</span>;
